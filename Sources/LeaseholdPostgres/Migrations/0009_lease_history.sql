-- Lease history: every change of a handler's ownership (created, claimed, reloaded, failed over,
-- released, hibernated, voided, finished, cancelled), written by the statement that makes the
-- change (no extra round trip), deleted with the handler.
CREATE TABLE lease_history (
    seq        bigserial PRIMARY KEY,
    handler_id text NOT NULL REFERENCES handlers (id) ON DELETE CASCADE,
    at         timestamptz NOT NULL DEFAULT now(),
    change     text NOT NULL CHECK (change IN ('created', 'claimed', 'reloaded', 'failed_over', 'released',
                                               'hibernated', 'voided', 'finished', 'cancelled')),
    replica    text,
    token      bigint NOT NULL
);
-- split
CREATE INDEX lease_history_handler ON lease_history (handler_id, seq);
