-- Leasehold schema, version 1. Never edit once shipped: add a new numbered file instead.
-- The migrator runs each file in one transaction and splits statements on "-- split" lines.

CREATE TABLE replicas (
    id           text PRIMARY KEY,
    address      text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);
-- split
CREATE TABLE handlers (
    id               text PRIMARY KEY,
    workflow_name    text NOT NULL,
    run_id           text NOT NULL,
    status           text NOT NULL DEFAULT 'running'
                     CHECK (status IN ('running', 'completed', 'failed', 'cancelled')),
    owner_replica    text,
    lease_expires_at timestamptz,
    fencing_token    bigint NOT NULL DEFAULT 1,
    hibernated       boolean NOT NULL DEFAULT false,
    wake_at          timestamptz,
    snapshot         bytea,
    last_sequence    bigint NOT NULL DEFAULT -1,
    result           jsonb,
    error            text,
    started_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz
);
-- split
-- Failover: owned handlers whose lease expired.
CREATE INDEX handlers_lease_expiry ON handlers (lease_expires_at)
    WHERE status = 'running' AND owner_replica IS NOT NULL;
-- split
-- Unowned running handlers: released (claimable now) or hibernated (claimable when woken).
CREATE INDEX handlers_unowned ON handlers (hibernated, wake_at)
    WHERE status = 'running' AND owner_replica IS NULL;
-- split
-- Renewal: every lease of one replica.
CREATE INDEX handlers_owner ON handlers (owner_replica) WHERE owner_replica IS NOT NULL;
-- split
CREATE INDEX handlers_listing ON handlers (status, workflow_name, started_at);
-- split
CREATE TABLE inbox (
    handler_id  text NOT NULL REFERENCES handlers (id) ON DELETE CASCADE,
    event_id    text NOT NULL,
    event       jsonb NOT NULL,
    consumed    boolean NOT NULL DEFAULT false,
    received_at timestamptz NOT NULL DEFAULT now(),
    seq         bigserial,
    PRIMARY KEY (handler_id, event_id)
);
-- split
CREATE INDEX inbox_pending ON inbox (handler_id) WHERE NOT consumed;
-- split
CREATE TABLE event_log (
    handler_id text NOT NULL REFERENCES handlers (id) ON DELETE CASCADE,
    sequence   bigint NOT NULL CHECK (sequence >= 0),
    record     jsonb NOT NULL,
    PRIMARY KEY (handler_id, sequence)
);
