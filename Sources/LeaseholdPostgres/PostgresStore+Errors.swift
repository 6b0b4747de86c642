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
    /// When the operation has not finished after `requestTimeout`, its connection is closed.
    /// postgres-nio does not cancel a query it has sent, and a request can wait forever: after a
    /// partition longer than `tcp_user_timeout` the server has dropped the session without a word,
    /// and a client whose request was already acknowledged has nothing to retransmit, so it never
    /// hears of it (keep-alive queries only run on idle connections). Closing fails the request; its
    /// outcome is then unknown, as after any dropped connection (every write is fenced, and a
    /// retried checkpoint is recognised by its sequence numbers).
    func guarded<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        do {
            guard let limit = requestTimeout else { return try await client.withConnection(body) }
            let leased = LeasedConnection()
            return try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { [logger] in
                    do { try await Task.sleep(for: limit) } catch { return }
                    guard let connection = leased.connection else { return }
                    logger.warning(
                        "database request unanswered, closing its connection", metadata: ["limit": "\(limit)"])
                    try? await connection.close()
                }
                defer { group.cancelAll() }
                return try await client.withConnection { connection in
                    leased.connection = connection
                    return try await body(connection)
                }
            }
        } catch let error as StoreError {
            throw error
        } catch {
            throw map(error)
        }
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

/// The connection a guarded request runs on, for its deadline to close.
private final class LeasedConnection: Sendable {
    private let current = Mutex<PostgresConnection?>(nil)
    var connection: PostgresConnection? {
        get { current.withLock { $0 } }
        set { current.withLock { $0 = newValue } }
    }
}
