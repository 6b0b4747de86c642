-- The `ledger` sample's external system (docs/design.md, "Fencing beyond the database"): per
-- handler, the highest fencing token that has posted, and the postings. A posting under a lower
-- token than the highest is refused, so a replica that lost its lease mid-step cannot overwrite
-- what the newer owner posted. Not used by Leasehold itself; deleted with nothing (a sample).
CREATE TABLE sample_ledger_fence (
    handler_id text PRIMARY KEY,
    token bigint NOT NULL
);
-- split
CREATE TABLE sample_ledger (
    handler_id text NOT NULL,
    posting integer NOT NULL,
    amount bigint NOT NULL,
    token bigint NOT NULL,
    posted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (handler_id, posting)
);
