import Foundation
import LeaseholdEngine
import LeaseholdKit
import LeaseholdStore
import PostgresNIO

/// Retention: purging finished handlers past their age, and deleting one run (which leaves a
/// tombstone, so that the failover check can tell a deletion from a loss).
extension PostgresStore {
    /// See `HandlerStore.delete(_:run:)`.
    public func delete(_ handlerID: HandlerID, run runID: String) async throws -> Bool {
        try await committed { connection in
            var deleted = false
            for try await _ in try await connection.checkedQuery(
                Statements.delete(id: handlerID.rawValue, runID: runID), logger: logger
            )
            .decode(String.self) {
                deleted = true
            }
            if deleted {
                try await connection.checkedQuery(
                    Statements.notify(Notification.log + handlerID.rawValue), logger: logger)
                try await connection.checkedQuery(
                    Statements.notify(Notification.inbox + handlerID.rawValue), logger: logger)
            }
            return deleted
        }
    }

    /// See `HandlerStore.purgeFinished(olderThan:limit:)`.
    public func purgeFinished(olderThan age: Duration, limit: Int) async throws -> [HandlerID] {
        try await guarded { connection in
            var deleted: [HandlerID] = []
            let query = Statements.purgeFinished(ageSeconds: age.seconds, limit: limit)
            for try await id in try await connection.checkedQuery(query, logger: logger).decode(String.self) {
                deleted.append(HandlerID(id))
            }
            return deleted
        }
    }
}

extension PostgresStore.Statements {
    /// One small transaction: the oldest finished handlers past the retention, skipping rows
    /// another replica's purge (or a cancel) holds, deleted with their log, inbox and lease
    /// history (the trigger of migration 0012).
    static func purgeFinished(ageSeconds: Double, limit: Int) -> PostgresQuery {
        """
        WITH doomed AS (
            SELECT id FROM handlers
            WHERE status <> 'running' AND completed_at < now() - make_interval(secs => \(ageSeconds))
            ORDER BY completed_at LIMIT \(limit)
            FOR UPDATE SKIP LOCKED)
        DELETE FROM handlers h USING doomed WHERE h.id = doomed.id RETURNING h.id
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
}
