-- Two processes started with one replica id (a restarted container beside a hung one) must not
-- share one registration: each would renew the other's leases and release what it does not run.
-- Every process registers with its own instance id. The newest registration wins: registering
-- voids every lease of the older one; the older process's renewals, claims and deregistration
-- then match nothing, its renewal reports that it was superseded, and it stops its handlers and
-- exits. Rows written by replicas of schema 3 carry the empty instance.

ALTER TABLE replicas ADD COLUMN instance text NOT NULL DEFAULT '';
