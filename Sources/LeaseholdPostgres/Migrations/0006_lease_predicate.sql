-- The one definition of "this lease is current", used by every fenced write (checkpoint,
-- hibernation, release): the handler row's token and owner are the writer's, the lease's own cap
-- has not passed, and the owner's registration is current. It takes the handler row's columns
-- (not a join), so that a write waiting on the row lock re-checks it against the row's newest
-- version.
--
-- PL/pgSQL, not SQL: a SQL function with a subquery is not inlined and its body is planned on
-- every call, which made a fenced single-row UPDATE take 0.44 ms instead of 0.21 ms inline
-- (pgbench, prepared statements, 8 clients, 2 cores); PL/pgSQL caches its plan per session:
-- 0.24 ms, about 30 µs over the inline predicate.
CREATE FUNCTION leasehold_lease_is_current(
    token bigint, owner text, cap timestamptz, writer_token bigint, writer text
) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN token = writer_token AND owner = writer AND cap > now()
        AND EXISTS (SELECT 1 FROM replicas r WHERE r.id = writer AND r.lease_expires_at > now());
END
$$;
-- split
-- A finished handler consumes what is left of its inbox (the checkpoint that finishes it does so
-- from now on): unconsumed rows of finished handlers filled the claim sweep's candidate window.
UPDATE inbox SET consumed = true
FROM handlers h WHERE inbox.handler_id = h.id AND h.status <> 'running' AND NOT inbox.consumed;
