-- Fencing tokens never repeat for a handler id, across purge and re-creation.
--
-- Before this migration a handler's token started at 1 and rose by one per claim, so deleting a
-- handler and creating one with the same id restarted it at 1: a write still retrying from the
-- old run (same id, same token) passed every fence and landed in the new run. Tokens now come
-- from one cluster-wide sequence: every create, claim and cancel takes the next value, so a
-- token is never handed out twice for any handler, and per handler tokens strictly increase.
-- (This holds as long as the database never goes back in time: see the replication notes in
-- the README — a promoted asynchronous standby can hand out a value again.)

CREATE SEQUENCE leasehold_fencing_tokens AS bigint;
-- split
SELECT setval('leasehold_fencing_tokens', GREATEST((SELECT max(fencing_token) FROM handlers), 0) + 1, false);
-- split
ALTER TABLE handlers ALTER COLUMN fencing_token SET DEFAULT nextval('leasehold_fencing_tokens');
