import Foundation
import LeaseholdEngine
import LeaseholdStore
import Synchronization

/// What the checker judges: the writes the database applied (with the lease each was made under)
/// and the answers clients were given, each at its simulated instant. Nothing of a replica's
/// internals. Its hash is the trace hash a replay must reproduce.
final class History: Sendable {
    struct Write: Sendable, Hashable {
        enum Kind: String, Sendable { case create, checkpoint, hibernate, release }
        var at: Duration
        var kind: Kind
        var lease: Lease
        var lastSequence: Int64
    }

    /// A side effect a step made outside the database (the `ledger` sample's posts).
    struct Effect: Sendable, Hashable {
        var at: Duration
        var handler: String
        var posting: Int
        var token: Int64
    }

    /// An answer a client was given.
    struct Answer: Sendable, Hashable {
        enum Kind: Sendable, Hashable {
            /// `start` answered: the handler exists (durable).
            case started(HandlerID)
            /// `run` answered this final record.
            case ran(HandlerID, status: HandlerStatus, result: JSONValue?)
            /// `send` answered: the event is durable and will be applied once.
            case sent(HandlerID, eventID: String, response: String)
            /// A call failed; the operation may or may not have happened.
            case failed(String)
        }
        var at: Duration
        var replica: ReplicaID
        var kind: Kind
    }

    private struct State {
        var writes: [Write] = []
        var answers: [Answer] = []
        var effects: [Effect] = []
        var registrations: [(at: Duration, replica: ReplicaID)] = []
        var grants: [(at: Duration, lease: Lease)] = []
        var rollbacks: [(from: Duration, to: Duration)] = []
        var events: [String] = []
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
    }

    private let state = Mutex(State())

    init() {}

    func write(_ write: Write) {
        state.withLock { state in
            state.writes.append(write)
            Self.mix(
                &state.hash,
                "w \(write.at) \(write.kind) \(write.lease.handlerID) \(write.lease.replicaID) \(write.lease.token) \(write.lastSequence)"
            )
        }
    }

    func answer(_ answer: Answer) {
        state.withLock { state in
            state.answers.append(answer)
            Self.mix(&state.hash, "a \(answer.at) \(answer.replica) \(answer.kind)")
        }
    }

    /// A lease the database granted (a creation or a claim applied; the answer may be lost).
    func granted(_ lease: Lease, at: Duration) {
        state.withLock { state in
            state.grants.append((at, lease))
            Self.mix(&state.hash, "g \(at) \(lease.handlerID) \(lease.replicaID) \(lease.token)")
        }
    }

    /// The database went back to its state at `from` (a failover at `to` to a standby that lagged).
    func rolledBack(from: Duration, to: Duration) {
        state.withLock { state in
            state.rollbacks.append((from, to))
            Self.mix(&state.hash, "b \(from) \(to)")
        }
    }

    /// A registration the database applied (it voids every lease of the id's earlier process).
    func registered(_ replica: ReplicaID, at: Duration) {
        state.withLock { state in
            state.registrations.append((at, replica))
            Self.mix(&state.hash, "r \(at) \(replica)")
        }
    }

    func effect(_ effect: Effect) {
        state.withLock { state in
            state.effects.append(effect)
            Self.mix(&state.hash, "e \(effect.at) \(effect.handler) \(effect.posting) \(effect.token)")
        }
    }

    /// A fault or another scheduled event, for the trace.
    func note(_ at: Duration, _ text: String) {
        state.withLock { state in
            state.events.append("\(at): \(text)")
            Self.mix(&state.hash, "n \(at) \(text)")
        }
    }

    var writes: [Write] { state.withLock { $0.writes } }
    var answers: [Answer] { state.withLock { $0.answers } }
    var effects: [Effect] { state.withLock { $0.effects } }
    var registrations: [(at: Duration, replica: ReplicaID)] { state.withLock { $0.registrations } }
    var grants: [(at: Duration, lease: Lease)] { state.withLock { $0.grants } }
    var rollbacks: [(from: Duration, to: Duration)] { state.withLock { $0.rollbacks } }
    var notes: [String] { state.withLock { $0.events } }
    var hash: UInt64 { state.withLock { $0.hash } }

    /// FNV-1a over the text's bytes.
    private static func mix(_ hash: inout UInt64, _ text: String) {
        for byte in text.utf8 {
            hash ^= UInt64(byte)
            hash &*= 0x0000_0100_0000_01B3
        }
    }
}
