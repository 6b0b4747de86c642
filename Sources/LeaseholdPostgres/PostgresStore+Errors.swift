import Foundation
import LeaseholdEngine
import LeaseholdStore
import PostgresNIO
import Synchronization

/// How Postgres errors become `StoreError`s: by SQLSTATE, then by postgres-nio's client error code.
extension PostgresStore {
    /// Runs a store operation on one pooled connection, turning connection failures into
    /// `StoreError.unavailable`.
    ///
    /// postgres-nio does not cancel a query it has sent, and a request can wait forever: after a
    /// partition longer than `tcp_user_timeout` the server has dropped the session without a word,
    /// and a client whose request was already acknowledged has nothing to retransmit, so it never
    /// hears of it (keep-alive queries only run on idle connections). Closing the connection is
    /// the one way to end such a request, so the connection is closed when the caller is
    /// cancelled (every `bounded` call, shutdown) and when the request has run `requestTimeout`
    /// on it (callers that are never cancelled). The request then fails with an unknown outcome,
    /// as after any dropped connection (every write is fenced, and a retried checkpoint is
    /// recognised by its sequence numbers).
    func guarded<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        do {
            return try await client.withConnection { connection in
                let request = RunningRequest(connection)
                defer { request.finish() }
                return try await withTaskCancellationHandler {
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        if let limit = requestTimeout {
                            group.addTask { [logger] in
                                do { try await Task.sleep(for: limit) } catch { return }
                                if request.cut() {
                                    logger.warning(
                                        "database request unanswered, closed its connection",
                                        metadata: ["limit": "\(limit)"])
                                }
                            }
                        }
                        defer { group.cancelAll() }
                        return try await body(connection)
                    }
                } onCancel: {
                    request.cut()
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
    func committed<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        try await guarded { connection in try await connection.checkedTransaction(logger: logger, body) }
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

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) * 1e-18
    }

    func json<T: Encodable>(_ value: T) throws -> String {
        String(decoding: try encoder.encode(value), as: UTF8.self)
    }
}

/// One request on a leased connection: the connection may be closed to end it only while the
/// request still runs (after `finish` the pool may have handed it to someone else).
private final class RunningRequest: Sendable {
    private let connection: Mutex<PostgresConnection?>

    init(_ connection: PostgresConnection) { self.connection = Mutex(connection) }

    func finish() { connection.withLock { $0 = nil } }

    /// Closes the connection if the request is still running; true when it did.
    @discardableResult
    func cut() -> Bool {
        connection.withLock { current in
            guard let running = current else { return false }
            current = nil
            let closing: EventLoopFuture<Void> = running.close()
            _ = closing
            return true
        }
    }
}
