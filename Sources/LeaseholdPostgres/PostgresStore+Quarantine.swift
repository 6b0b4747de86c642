import Foundation
import LeaseholdEngine
import LeaseholdStore
import PostgresNIO

/// Containment's records: crashes of step processes, the quarantine of a handler whose steps
/// crashed their process too often, creations refused for it, and an operator's release.
extension PostgresStore {
    /// See `HandlerStore.recordCrash(of:handlers:all:signal:)`.
    public func recordCrash(of replica: ReplicaID, handlers: [HandlerID], all: Bool, signal: Int32) async throws
        -> [HandlerID]
    {
        try await guarded { connection in
            let query = Statements.recordCrash(
                replica: replica.rawValue, ids: handlers.map(\.rawValue), all: all, signal: signal)
            var marked: [HandlerID] = []
            for try await id in try await connection.checkedQuery(query, logger: logger).decode(String.self) {
                marked.append(HandlerID(id))
            }
            return marked
        }
    }

    /// See `HandlerStore.preventCreation(_:reason:)`.
    public func preventCreation(_ new: NewHandler, reason: String?) async throws -> HandlerRecord? {
        let blocked = try await committed { connection in
            let query = Statements.preventCreation(
                id: new.id.rawValue, workflow: new.workflowName, runID: new.runID,
                reason: reason ?? "not started")
            var blocked = false
            for try await inserted in try await connection.checkedQuery(query, logger: logger).decode(Bool.self) {
                blocked = inserted
            }
            if blocked, reason == nil {
                // The in-flight creation is resolved (rolled back); the id is left free again.
                try await connection.checkedQuery(Statements.deleteUnstarted(id: new.id.rawValue), logger: logger)
            } else if blocked {
                try await connection.checkedQuery(
                    Statements.notify(Notification.log + new.id.rawValue), logger: logger)
            }
            return blocked
        }
        if blocked { return nil }
        // The creation committed first; a purge since (past the retention) would leave nothing
        // to find, and then it ran and finished: the record is gone either way.
        guard let record = try await handler(new.id) else { throw StoreError.handlerNotFound(new.id) }
        return record
    }

    /// See `HandlerStore.releaseQuarantine(_:)`.
    public func releaseQuarantine(_ handlerID: HandlerID) async throws -> Bool {
        try await committed { connection in
            var released = false
            for try await _ in try await connection.checkedQuery(
                Statements.releaseQuarantine(id: handlerID.rawValue), logger: logger
            ).decode(String.self) {
                released = true
            }
            if released {
                try await connection.checkedQuery(
                    Statements.notify(Notification.inbox + handlerID.rawValue), logger: logger)
            }
            return released
        }
    }
}

extension PostgresStore.Statements {
    /// The error of a quarantined handler starts so (`Tick.Kind.quarantine`); its finishing
    /// checkpoint leaves its inbox for the release.
    static func notQuarantined(_ error: String) -> String {
        "COALESCE(\(error), '') NOT LIKE 'quarantined:%'"
    }

    /// Whether the handler in `alias` is a suspect: a replica died of a fault while one of
    /// its steps ran there (migration 0014). An index probe on a table that is empty but for crashes.
    static func suspect(_ alias: String) -> String {
        "EXISTS (SELECT 1 FROM handler_crashes x WHERE x.handler_id = \(alias).id AND x.run_id = \(alias).run_id)"
    }

    /// A failed record for `id` unless one exists; an insert of the id still in flight is
    /// waited for (ON CONFLICT does), so the answer is final: true when this one stands.
    static func preventCreation(id: String, workflow: String, runID: String, reason: String) -> PostgresQuery {
        """
        WITH blocked AS (
            INSERT INTO handlers (id, workflow_name, run_id, status, error, fencing_token, completed_at)
            VALUES (\(id), \(workflow), \(runID), 'failed', \(reason), nextval('leasehold_fencing_tokens'), now())
            ON CONFLICT (id) DO NOTHING
            RETURNING id)
        SELECT EXISTS (SELECT 1 FROM blocked)
        """
    }

    /// Takes back the record `preventCreation` inserted, in its transaction (no trigger's
    /// children exist yet: nothing else was written for it).
    static func deleteUnstarted(id: String) -> PostgresQuery {
        "DELETE FROM handlers WHERE id = \(id) AND status = 'failed' AND last_sequence = -1"
    }

    /// The crash watcher's one statement: each named handler still running gets a crash row,
    /// whoever owns it now (the dead replica had a step of it running, so it owned it; a
    /// restart of that id or a quick claimer may have taken it since, and the mark must not be
    /// lost to that); with `all`, each running handler the dead replica still owns. Answers
    /// the ids marked.
    static func recordCrash(replica: String, ids: [String], all: Bool, signal: Int32) -> PostgresQuery {
        """
        INSERT INTO handler_crashes (handler_id, run_id, replica, token, signal)
        SELECT id, run_id, \(replica), fencing_token, \(Int(signal))
        FROM handlers
        WHERE status = 'running'
            AND (id = ANY(\(ids)::text[]) OR (\(all)::bool AND owner_replica = \(replica)))
        ON CONFLICT (handler_id, token) DO NOTHING
        RETURNING handler_id
        """
    }

    /// A quarantined handler (failed, its snapshot saying why) runs again: running, unowned and
    /// not hibernated, so the next claim takes it; its crash rows stay (it is still a suspect).
    static func releaseQuarantine(id: String) -> PostgresQuery {
        """
        UPDATE handlers SET status = 'running', error = NULL, result = NULL, completed_at = NULL,
            owner_replica = NULL, lease_expires_at = NULL, hibernated = false, wake_at = NULL, updated_at = now()
        WHERE id = \(id) AND status = 'failed' AND snapshot IS NOT NULL
            AND convert_from(snapshot, 'UTF8')::jsonb ? 'quarantine'
        RETURNING id
        """
    }
}
