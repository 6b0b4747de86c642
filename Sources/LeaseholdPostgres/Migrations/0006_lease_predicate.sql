-- The one definition of "this lease is current", used by every fenced write (checkpoint,
-- hibernation, release): the handler row's token and owner are the writer's, the lease's own cap
-- has not passed, and the owner's registration is current. It takes the handler row's columns
-- (not a join), so that a write waiting on the row lock re-checks it against the row's newest
-- version. Measured against the same predicate written inline: see docs/design.md ("Fencing").
CREATE FUNCTION leasehold_lease_is_current(
    token bigint, owner text, cap timestamptz, writer_token bigint, writer text
) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT token = writer_token AND owner = writer AND cap > now()
        AND EXISTS (SELECT 1 FROM replicas r WHERE r.id = writer AND r.lease_expires_at > now())
$$;
-- split
-- A finished handler consumes what is left of its inbox (the checkpoint that finishes it does so
-- from now on): unconsumed rows of finished handlers filled the claim sweep's candidate window.
UPDATE inbox SET consumed = true
FROM handlers h WHERE inbox.handler_id = h.id AND h.status <> 'running' AND NOT inbox.consumed;
