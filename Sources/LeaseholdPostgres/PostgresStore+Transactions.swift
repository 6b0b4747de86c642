import Foundation
import LeaseholdEngine
import LeaseholdStore
import PostgresNIO

/// How a store operation reaches the database: one pooled connection, watched by the request
/// watchdog, gated by the node gate, inside an explicit transaction when its success is acted on;
/// and how Postgres errors become `StoreError`s (by SQLSTATE, then postgres-nio's client codes).
extension PostgresStore {
    /// Runs a store operation on one pooled connection, turning connection failures into
    /// `StoreError.unavailable`. Its statements are watched: one that waits longer than
    /// `requestTimeout` has its connection closed (see `RequestWatchdog`). Unless `gated` is false
    /// (reads, and what checks the database: renewals, the failover check), nothing runs on a node the
    /// replica has not checked (see `NodeGate`).
    func guarded<T: Sendable>(gated: Bool = true, _ body: (PostgresConnection) async throws -> T) async throws -> T {
        do {
            return try await client.withConnection { connection in
                let request = watchdog.start(on: connection)
                defer { watchdog.finish(request) }
                return try await InFlightRequest.$current.withValue(request) {
                    if gated { try await nodeGate.admit(connection, logger: logger) { signals.databaseMoved() } }
                    return try await body(connection)
                }
            }
        } catch let error as StoreError {
            throw error
        } catch {
            throw map(error)
        }
    }

    /// `guarded`, inside an explicit transaction: success means that COMMIT answered.
    ///
    /// postgres-nio reports a statement's success at its CommandComplete, and for a statement in
    /// an implicit transaction that comes before the commit: a session ended in between (a
    /// terminated backend, a server shutting down) reported success for a write that was rolled
    /// back (found by the randomized fault run: a checkpoint "written" but absent, then a
    /// hibernation whose snapshot claimed its records). Every write whose success is acted on
    /// runs through here.
    func committed<T: Sendable>(gated: Bool = true, _ body: (PostgresConnection) async throws -> T) async throws
        -> T
    {
        try await guarded(gated: gated) { connection in try await connection.checkedTransaction(logger: logger, body) }
    }

    private func map(_ error: any Error) -> any Error {
        if let error = error as? StoreError { return error }
        if error is PostgresConnection.Closed { return StoreError.unavailable("connection closed") }
        guard let psql = error as? PSQLError else { return error }
        if let state = psql.serverInfo?[.sqlState] {
            // A unique violation is read by its constraint: only the event log's key means that a
            // sequence number was already written (a checkpoint retried after an unknown outcome).
            if state == "23505", psql.serverInfo?[.constraintName] == Self.eventLogKey {
                return StoreError.sequenceConflict(HandlerID(psql.serverInfo?[.detail] ?? "?"), -1)
            }
            // 08: connection exception; 57P: operator intervention (shutdown, terminated backend); 53: resources;
            // and the transient outcomes a retry resolves: serialization failure, deadlock, query
            // cancelled (statement timeout), idle-in-transaction timeout, lock not available.
            if state.hasPrefix("08") || state.hasPrefix("57P") || state.hasPrefix("53")
                || Self.transientStates.contains(state)
            {
                return StoreError.unavailable(psql.serverInfo?[.message] ?? state)
            }
            return StoreError.corrupt("\(psql.serverInfo?[.message] ?? "") (SQLSTATE \(state))")
        }
        switch psql.code {
        case .connectionError, .serverClosedConnection, .clientClosedConnection, .poolClosed, .uncleanShutdown,
            .queryCancelled:
            return StoreError.unavailable("\(psql.code)")
        default:
            return StoreError.unavailable(String(reflecting: psql))
        }
    }

    /// SQLSTATEs that mean "try again", not "corrupt": 40001 serialization_failure, 40P01
    /// deadlock_detected, 57014 query_canceled, 25P03 idle_in_transaction_session_timeout,
    /// 55P03 lock_not_available.
    /// The event log's primary key (handler, sequence), as Postgres names it.
    static let eventLogKey = "event_log_pkey"

    static let transientStates: Set<String> = ["40001", "40P01", "57014", "25P03", "55P03"]

    /// A server error in answer to a statement or to COMMIT: the transaction did not commit.
    /// Connection and shutdown errors, and FATAL or PANIC ones (a failed WAL flush at COMMIT is a
    /// PANIC whose commit record may survive recovery), leave the outcome unknown.
    static func rolledBack(_ error: PSQLError) -> Bool {
        guard let state = error.serverInfo?[.sqlState] else { return false }
        if let severity = error.serverInfo?[.severity], severity == "FATAL" || severity == "PANIC" { return false }
        return !state.hasPrefix("08") && !state.hasPrefix("57P")
    }
}
