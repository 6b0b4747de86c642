-- Which database node answers, for the replicas' check that the database never silently goes
-- back in time (docs/design.md, "A database that goes back in time"). Every renewal and every
-- audit calls it, so that what they report is the node that ran them.
--
-- The system identifier and the timeline come from functions some managed services refuse
-- (Aurora rejects pg_current_wal_lsn() unless wal_level is logical): an error there answers NULL
-- (the check is then off, and renewals go on), never a failed renewal. The timeline is that of the
-- WAL written now (a just-promoted primary is on its new timeline at once, unlike the
-- checkpoint's). Synchronous standbys: -1 when this role may not read pg_stat_replication.
CREATE FUNCTION leasehold_database_node(
    OUT system_identifier text, OUT timeline integer, OUT node text, OUT synchronous_standbys integer)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    BEGIN
        SELECT c.system_identifier::text INTO system_identifier FROM pg_control_system() c;
        timeline := ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::integer;
    EXCEPTION WHEN OTHERS THEN
        system_identifier := NULL;
        timeline := NULL;
    END;
    node := COALESCE(host(inet_server_addr()) || ':' || inet_server_port(), 'local');
    SELECT CASE WHEN bool_or(r.sync_state IS NULL) THEN -1
        ELSE (count(*) FILTER (WHERE r.sync_state IN ('sync', 'quorum')))::integer END
        INTO synchronous_standbys FROM pg_stat_replication r;
END
$$;
