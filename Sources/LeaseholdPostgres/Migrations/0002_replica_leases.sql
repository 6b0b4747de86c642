-- Leases anchored to the replica: renewing every lease of a replica is one row update.
--
-- A handler owned by replica R is held while R's registration is current
-- (replicas.lease_expires_at > now()) and the handler's own cap has not passed
-- (handlers.lease_expires_at, 'infinity' unless R stopped renewing that one lease, e.g. a write
-- stuck on a dead connection). Claims, checkpoints, hibernation and release all test both.
-- A registration that lapsed is void with every lease it carried: the replica's next renewal
-- releases them and registers it anew; a replica process always starts a new registration.
--
-- Replicas still running version 1 keep renewing per-handler expiries, which no longer hold:
-- upgrade across this migration by restarting every replica (their handlers move on the
-- version-2 replicas; fencing rejects any write of the old ones).

ALTER TABLE replicas ADD COLUMN lease_expires_at timestamptz NOT NULL DEFAULT 'epoch';
-- split
UPDATE handlers SET lease_expires_at = 'infinity' WHERE owner_replica IS NOT NULL AND lease_expires_at > now();
-- split
-- The effective expiry of a handler's lease (NULL when unowned), for records and status pages.
CREATE FUNCTION leasehold_lease_expiry(owner text, cap timestamptz) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN owner IS NULL THEN NULL
        ELSE LEAST(cap, COALESCE((SELECT r.lease_expires_at FROM replicas r WHERE r.id = owner), 'epoch'))
    END
$$;
