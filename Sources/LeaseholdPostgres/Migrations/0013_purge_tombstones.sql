-- A purge (a client's cancel with purge=true) leaves a tombstone: the handler's id and the fencing
-- token and last sequence it held when it was deleted. After a database failover a replica reads back what it had
-- acknowledged (docs/design.md, "The database never silently goes back in time"); a handler that
-- another replica purged meanwhile is gone from `handlers` as surely as one the database lost, and
-- only the tombstone tells the two apart. Written in the purge's own statement (the same commit:
-- a database that lost the purge lost its tombstone too) and kept one hour, far longer than a
-- replica remembers what it acknowledged (at most ten minutes and one generation); each purge
-- deletes up to 100 of the tombstones past that (more than it adds, so the table holds about one
-- hour of purges).
CREATE TABLE purged_handlers (
    handler_id text NOT NULL,
    token      bigint NOT NULL,
    last_sequence bigint NOT NULL,
    purged_at  timestamptz NOT NULL DEFAULT now()
);
-- split
CREATE INDEX purged_handlers_id ON purged_handlers (handler_id);
-- split
CREATE INDEX purged_handlers_at ON purged_handlers (purged_at);
