import Foundation
import PostgresNIO

/// The Postgres store's read statements: records, logs, the cluster view and the database audit.
extension PostgresStore.Statements {
    static func leaseHistory(id: String) -> PostgresQuery {
        """
        SELECT handler_id, at, change, replica, token FROM lease_history WHERE handler_id = \(id) ORDER BY seq
        """
    }

    static func recentLeaseChanges(limit: Int) -> PostgresQuery {
        """
        SELECT handler_id, at, change, replica, token FROM lease_history ORDER BY seq DESC LIMIT \(limit)
        """
    }

    /// Deletes one run of a handler (its log, inbox and lease history go with it: migration 0012)
    /// and leaves its tombstone, dropping up to 100 tombstones past their hour (migration 0013;
    /// skipping rows another purge is dropping).
    static func delete(id: String, runID: String) -> PostgresQuery {
        """
        WITH gone AS (
            DELETE FROM handlers WHERE id = \(id) AND run_id = \(runID) RETURNING id, fencing_token, last_sequence),
        tombstone AS (
            INSERT INTO purged_handlers (handler_id, token, last_sequence)
            SELECT id, fencing_token, last_sequence FROM gone),
        expired AS (
            DELETE FROM purged_handlers WHERE ctid IN (
                SELECT ctid FROM purged_handlers WHERE purged_at < now() - interval '1 hour'
                LIMIT 100 FOR UPDATE SKIP LOCKED))
        SELECT id FROM gone
        """
    }

    static func handler(id: String) -> PostgresQuery {
        """
        SELECT \(unescaped: recordColumns)
        FROM handlers h WHERE h.id = \(id)
        """
    }

    /// `idPrefix` compares with `starts_with` (no LIKE pattern: an id may hold `_`).
    static func handlers(statuses: [String], workflows: [String], idPrefix: String?, limit: Int) -> PostgresQuery {
        """
        SELECT \(unescaped: recordColumns)
        FROM handlers h
        WHERE (cardinality(\(statuses)::text[]) = 0 OR h.status = ANY(\(statuses)::text[]))
            AND (cardinality(\(workflows)::text[]) = 0 OR h.workflow_name = ANY(\(workflows)::text[]))
            AND (\(idPrefix)::text IS NULL OR starts_with(h.id, \(idPrefix)::text))
        ORDER BY h.started_at, h.id
        LIMIT \(limit)
        """
    }

    static func events(id: String, after: Int64, limit: Int) -> PostgresQuery {
        """
        SELECT record::text FROM event_log
        WHERE handler_id = \(id) AND sequence > \(after)
        ORDER BY sequence LIMIT \(limit)
        """
    }

    static func replicas(ttlSeconds: Double) -> PostgresQuery {
        """
        SELECT r.id, r.address, r.started_at, r.heartbeat_at,
            (SELECT count(*) FROM handlers h WHERE h.owner_replica = r.id),
            r.heartbeat_at > now() - make_interval(secs => \(ttlSeconds))
        FROM replicas r ORDER BY r.id
        """
    }

    /// One header row (no id) with the highest token handed out and the node that answered,
    /// then each asked-for handler with its token and last sequence. The sequence is read with
    /// `pg_sequence_last_value` (USAGE suffices; NULL before its first `nextval`).
    /// One row for the database (its token sequence and node), one per handler that exists, and
    /// one per handler purged within the tombstones' hour: the latest position it was deleted at.
    /// Without `tombstones`, for a database without migration 0013 (one restored from before it),
    /// they are read from an empty relation of the same shape, so that its check can still be made.
    static func audit(ids: [String], tombstones: Bool = true) -> PostgresQuery {
        let source =
            tombstones
            ? "purged_handlers"
            : "(SELECT NULL::text, 0::bigint, 0::bigint, now() WHERE false) AS none (handler_id, token, last_sequence, purged_at)"
        return """
            SELECT 'database', NULL::text, COALESCE(pg_sequence_last_value('leasehold_fencing_tokens'), 0),
                NULL::bigint, n.system_identifier, n.timeline
            FROM leasehold_database_node() n
            UNION ALL
            SELECT 'handler', id, fencing_token, last_sequence, NULL, NULL FROM handlers WHERE id = ANY(\(ids)::text[])
            UNION ALL
            (SELECT DISTINCT ON (handler_id) 'purged', handler_id, token, last_sequence, NULL, NULL
            FROM \(unescaped: source)
            WHERE handler_id = ANY(\(ids)::text[]) AND purged_at >= now() - interval '1 hour'
            ORDER BY handler_id, token DESC, last_sequence DESC)
            """
    }

    /// Moves the token sequence past `token` and past every token a handler row holds (rows
    /// copied from elsewhere), and only forward: draws tokens, at most `advanceBatch` per
    /// statement, and answers how many are still missing (0: done). Drawn, not
    /// `setval`: a reservation or claim drawing at the same moment could otherwise be overtaken by a
    /// `setval` computed from before it, and the sequence would move back below a token it handed
    /// out. Draws only move forward, whoever else draws meanwhile.
    static func advanceTokens(past token: Int64) -> PostgresQuery {
        """
        WITH goal AS (
            SELECT GREATEST(\(token), (SELECT COALESCE(max(fencing_token), 0) FROM handlers))
                - (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END
                    FROM leasehold_fencing_tokens) AS missing),
        drawn AS (
            SELECT nextval('leasehold_fencing_tokens') FROM generate_series(1, LEAST(
                (SELECT missing FROM goal), \(advanceBatch))))
        SELECT GREATEST(0, (SELECT missing FROM goal) - (SELECT count(*) FROM drawn))
        """
    }

    static let advanceBatch: Int64 = 1_000_000

    static func counts() -> PostgresQuery {
        """
        SELECT status, hibernated, count(*),
            count(*) FILTER (WHERE owner_replica IS NOT NULL
                AND \(unescaped: leaseExpiry(owner: "owner_replica", cap: "lease_expires_at")) <= now())
        FROM handlers GROUP BY status, hibernated
        """
    }
}
