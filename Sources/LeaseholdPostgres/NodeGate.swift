import LeaseholdStore
import Logging
import PostgresNIO
import Synchronization

/// Nothing reaches a database node this replica has not checked.
///
/// After a database failover the pool's new connections reach the new node before the replica's
/// next renewal learns of it, and a write landing there first could erase or mask the evidence the
/// replica's failover check looks for (a checkpoint over a lost one, a rejected write that makes it
/// forget a position). So each connection is asked once which node it reached
/// (`leasehold_database_node()`, one round trip per connection) before its first operation through
/// the gate; an operation on a node other than the trusted one fails retryably
/// (`StoreError.unavailable`, nothing sent) and wakes the replica's check
/// (`StoreSignals.databaseMoves`). The replica trusts the node once its check passed
/// (`PostgresStore.trust`). Until the first trust (a replica that has not renewed yet has nothing
/// to check) and on a node that does not tell its identity (a managed service refusing the
/// functions), everything passes.
///
/// Renewals, registration, the failover check and the token sequence's move are not gated: they are how
/// the node is learnt and checked; nor are reads, which cannot erase evidence (what they answer
/// is what that node holds).
final class NodeGate: Sendable {
    struct Identity: Hashable, Sendable {
        var systemIdentifier: String
        var timeline: Int
    }

    /// What a connection's node said: its identity, or nothing (it does not tell).
    private enum Answer: Hashable {
        case identity(Identity)
        case silent
    }

    private struct State {
        var trusted: Identity?
        var connections: [PostgresConnection.ID: Answer] = [:]
        /// The last node refused, so that it is logged once.
        var refused: Identity?
    }

    /// A pool's connections are few and long-lived; the table is emptied (and its connections
    /// asked again) if churn ever fills it.
    static let connectionLimit = 256

    private let state = Mutex(State())

    func trust(_ identity: Identity) {
        state.withLock { state in
            state.trusted = identity
            state.refused = nil
            state.connections = state.connections.filter { $0.value == .identity(identity) || $0.value == .silent }
        }
    }

    /// Returns when `connection` may be used; throws `StoreError.unavailable` when it reached a
    /// node the replica has not checked yet (after calling `moved`).
    func admit(_ connection: PostgresConnection, logger: Logger, moved: () -> Void) async throws {
        let known = state.withLock { state -> Bool in
            guard let trusted = state.trusted, let answer = state.connections[connection.id] else {
                return state.trusted == nil
            }
            return answer == .silent || answer == .identity(trusted)
        }
        if known { return }
        var answer = Answer.silent
        var inRecovery = false
        let rows = try await connection.checkedQuery(
            "SELECT n.system_identifier, n.timeline, pg_is_in_recovery() FROM leasehold_database_node() n",
            logger: logger)
        for try await (system, timeline, recovery) in rows.decode((String?, Int32?, Bool).self) {
            inRecovery = recovery
            if let system, let timeline {
                answer = .identity(Identity(systemIdentifier: system, timeline: Int(timeline)))
            }
        }
        // A standby tells nothing of the node it will be once promoted, and its session survives
        // the promotion: refused (it would refuse a write anyway), and asked again at the next use.
        if inRecovery {
            throw StoreError.unavailable("the database node is a standby (in recovery)")
        }
        let refusal = state.withLock { state -> (Identity, Identity, Bool)? in
            if state.connections.count >= Self.connectionLimit { state.connections.removeAll() }
            guard let trusted = state.trusted, case .identity(let identity) = answer, identity != trusted else {
                state.connections[connection.id] = answer
                return nil
            }
            let first = state.refused != identity
            state.refused = identity
            return (trusted, identity, first)
        }
        guard let (trusted, identity, first) = refusal else { return }
        if first {
            logger.warning(
                "a connection reached a database node not checked yet; its operations wait for the check",
                metadata: [
                    "database":
                        "\(trusted.systemIdentifier)/\(trusted.timeline) -> \(identity.systemIdentifier)/\(identity.timeline)"
                ])
        }
        moved()
        throw StoreError.unavailable(
            "the database node changed (timeline \(trusted.timeline) -> \(identity.timeline)); waiting for this replica's check"
        )
    }
}
