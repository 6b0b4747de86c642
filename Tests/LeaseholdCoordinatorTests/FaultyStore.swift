import Foundation
import LeaseholdEngine
import LeaseholdPostgres
import LeaseholdRuntime
import LeaseholdStore
import LeaseholdTestSupport
import PostgresNIO
import Synchronization
import Testing

@testable import LeaseholdCoordinator

struct RenewalNeverRan: Error {}

/// The Postgres store, except that one renewal's answer can be held back after the statement ran,
/// and the database time renewals report can be stepped (as a database whose clock jumped).
final class FaultyStore: HandlerStore {
    private let base: PostgresStore
    private let clockStep = Mutex<TimeInterval>(0)

    func stepDatabaseClock(by seconds: TimeInterval) { clockStep.withLock { $0 += seconds } }

    /// The database fails over (a timeline later) or is replaced by another one (another system
    /// identifier), at the next renewal, before it is sent: `TestDatabase.moveNode` (every reader
    /// of the node sees it, and every session ends). With `losing`, the failover also takes
    /// writes back first (no answer shows the new node without the loss).
    private let url: DatabaseURL?
    private let pendingMove = Mutex<(timelines: Int, systemIdentifier: String?)?>(nil)
    private let timelinesMoved = Mutex(0)
    private let pendingLoss = Mutex<(@Sendable () async throws -> Void)?>(nil)
    func failOverDatabase(losing loss: (@Sendable () async throws -> Void)? = nil) {
        pendingLoss.withLock { $0 = loss }
        pendingMove.withLock { $0 = (($0?.timelines ?? 0) + 1, $0?.systemIdentifier) }
    }
    func replaceDatabase(systemIdentifier: String) {
        pendingMove.withLock { $0 = ($0?.timelines ?? 0, systemIdentifier) }
    }

    /// Claims fail (as with the database briefly unreachable) this many times.
    private let failingClaims = Mutex(0)
    func failNextClaims(_ count: Int) { failingClaims.withLock { $0 = count } }
    /// Claims still to fail (0: every injected failure was met).
    var claimsStillToFail: Int { failingClaims.withLock { $0 } }

    /// Appends that may claim answer `handlerBusy` (its row held elsewhere) this many times,
    /// writing nothing: the sender then appends without claiming and reloads after.
    private let busyClaimingAppends = Mutex(0)
    func busyNextClaimingAppends(_ count: Int) { busyClaimingAppends.withLock { $0 = count } }

    /// Checkpoints of this handler never return (a dead connection that never errors) until the
    /// calling task is cancelled; nothing is written.
    private let hanging = Mutex<Set<HandlerID>>([])
    func hangCheckpoints(of id: HandlerID) { hanging.withLock { _ = $0.insert(id) } }
    private struct Gate {
        var holding = false
        var held = false
        var release: CheckedContinuation<Void, Never>?
        var released = false
    }
    private let gate = Mutex(Gate())

    /// - Parameter url: the database's, for `failOverDatabase` and `replaceDatabase`.
    init(_ base: PostgresStore, url: DatabaseURL? = nil) {
        self.base = base
        self.url = url
    }

    func holdNextAnswer() { gate.withLock { $0 = Gate(holding: true) } }

    func waitUntilHeld() async throws {
        let held = await eventually { self.gate.withLock { $0.held } }
        if !held { throw RenewalNeverRan() }
    }

    func deliverAnswer() {
        let waiting = gate.withLock { gate -> CheckedContinuation<Void, Never>? in
            gate.released = true
            defer { gate.release = nil }
            return gate.release
        }
        waiting?.resume()
    }

    var signals: StoreSignals { base.signals }
    func trust(_ node: DatabaseNode) { base.trust(node) }

    /// The next renewals never return (requests on connections a partition killed) until the
    /// calling task is cancelled; nothing is written.
    private let hangingRenewals = Mutex(0)
    func hangNextRenewals(_ count: Int) { hangingRenewals.withLock { $0 = count } }

    func renew(_ replica: ReplicaID, address: String, ttl: Duration, excluding: [HandlerID]) async throws -> Renewal {
        let hang = hangingRenewals.withLock { count -> Bool in
            guard count > 0 else { return false }
            count -= 1
            return true
        }
        if hang {
            try await Task.sleep(for: .seconds(3600))
        }
        // Taken only once the loss and the move are done: on a loaded machine either may fail
        // (a renewal's statement cancelled, a connection the move itself ended), and the next
        // renewal must then make the failover instead of none (a CI run, 2026-12-08). Both are
        // idempotent: the loss sets values, the move sets an absolute timeline.
        if let move = pendingMove.withLock({ $0 }) {
            guard let url else { throw RenewalNeverRan() }
            if let loss = pendingLoss.withLock({ $0 }) { try await loss() }
            let timelines = timelinesMoved.withLock { $0 } + move.timelines
            try await TestDatabase.moveNode(url, timelines: timelines, systemIdentifier: move.systemIdentifier)
            pendingMove.withLock { pending in
                guard pending != nil else { return }
                pending = nil
                timelinesMoved.withLock { $0 = timelines }
                pendingLoss.withLock { $0 = nil }
            }
        }
        var answer = try await base.renew(replica, address: address, ttl: ttl, excluding: excluding)
        let step = clockStep.withLock { $0 }
        answer.databaseTime = answer.databaseTime.map { $0.addingTimeInterval(step) }
        guard gate.withLock({ $0.holding && !$0.held }) else { return answer }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let resumeNow = gate.withLock { gate -> Bool in
                gate.held = true
                if gate.released { return true }
                gate.release = continuation
                return false
            }
            if resumeNow { continuation.resume() }
        }
        return answer
    }

    func register(_ replica: ReplicaID, address: String, ttl: Duration) async throws -> DatabaseNode? {
        try await base.register(replica, address: address, ttl: ttl)
    }
    func deregister(_ replica: ReplicaID) async throws { try await base.deregister(replica) }
    func create(_ handler: NewHandler, owner: ReplicaID) async throws -> ClaimedHandler {
        count("create")
        return try await base.create(handler, owner: owner)
    }
    /// Calls of each write, by name ("create", "create+checkpoint", "checkpoint").
    private let writeCalls = Mutex<[String: Int]>([:])
    var writes: [String: Int] { writeCalls.withLock { $0 } }
    private func count(_ name: String) { writeCalls.withLock { $0[name, default: 0] += 1 } }

    /// Creations with a first checkpoint are refused as if the owner's lease were not current.
    private let refusingCreations = Mutex(false)
    func refuseCreationsWithCheckpoint() { refusingCreations.withLock { $0 = true } }

    func create(_ handler: NewHandler, owner: ReplicaID, token: FencingToken, first: Checkpoint) async throws
        -> HandlerRecord?
    {
        count("create+checkpoint")
        if refusingCreations.withLock({ $0 }) { throw StoreError.leaseLost(handler.id) }
        return try await losingAnswer(first) {
            try await base.create(handler, owner: owner, token: token, first: first)
        }
    }
    func reserveTokens(_ count: Int) async throws -> [FencingToken] { try await base.reserveTokens(count) }
    func claim(_ replica: ReplicaID, limit: Int, only: HandlerID?) async throws -> [ClaimedHandler] {
        let fail = failingClaims.withLock { count -> Bool in
            guard count > 0 else { return false }
            count -= 1
            return true
        }
        if fail { throw StoreError.unavailable("injected: claim failed") }
        return try await base.claim(replica, limit: limit, only: only)
    }
    func checkpoint(_ checkpoint: Checkpoint, lease: Lease) async throws -> HandlerRecord? {
        if hanging.withLock({ $0.contains(lease.handlerID) }) {
            try await Task.sleep(for: .seconds(3600))
        }
        count("checkpoint")
        return try await losingAnswer(checkpoint) { try await base.checkpoint(checkpoint, lease: lease) }
    }

    /// Runs `write`; loses its answer after it committed when `checkpoint` is one whose answer is
    /// to be lost (see `loseCheckpointAnswers`).
    private func losingAnswer(_ checkpoint: Checkpoint, _ write: () async throws -> HandlerRecord?) async throws
        -> HandlerRecord?
    {
        // Decided (and counted) before the write: the test reads the count once it sees the
        // commit, which can be before this task runs again.
        let (before, lose) = lostAnswers.withLock { lost -> ((first: Bool, final: Bool), Bool) in
            let before = lost
            if lost.first, !checkpoint.log.isEmpty {
                lost.first = false
                // Under load the first checkpoint with records can also be the final one (every
                // tick ran while an earlier write was in flight): then both answers are this one.
                if checkpoint.state.status.isFinished { lost.final = false }
                return (before, true)
            }
            if lost.final, checkpoint.state.status.isFinished {
                lost.final = false
                return (before, true)
            }
            return (before, false)
        }
        let finished: HandlerRecord?
        do {
            finished = try await write()
        } catch {
            if lose { lostAnswers.withLock { $0 = before } }  // not committed: nothing was lost
            throw error
        }
        if lose { throw StoreError.unavailable("injected: the answer to a committed checkpoint was lost") }
        return finished
    }

    /// The first checkpoint that carries log records, and the one that finishes the handler,
    /// commit and then lose their answer (the connection died after COMMIT was processed): the
    /// caller sees `unavailable`.
    private let lostAnswers = Mutex((first: false, final: false))
    func loseCheckpointAnswers() { lostAnswers.withLock { $0 = (first: true, final: true) } }
    var answersStillToLose: Int { lostAnswers.withLock { ($0.first ? 1 : 0) + ($0.final ? 1 : 0) } }
    func hibernate(_ checkpoint: Checkpoint, wakeAt: Date?, lease: Lease) async throws -> Bool {
        try await base.hibernate(checkpoint, wakeAt: wakeAt, lease: lease)
    }
    func release(_ checkpoint: Checkpoint?, lease: Lease) async throws {
        try await base.release(checkpoint, lease: lease)
    }
    func appendInbox(
        _ handlerID: HandlerID, _ event: InboxEvent, accepting: [String]?, from replica: ReplicaID?, claim: Bool
    ) async throws -> InboxReceipt {
        let busy =
            claim
            && busyClaimingAppends.withLock { count -> Bool in
                guard count > 0 else { return false }
                count -= 1
                return true
            }
        if busy { throw StoreError.handlerBusy(handlerID) }
        return try await base.appendInbox(handlerID, event, accepting: accepting, from: replica, claim: claim)
    }
    func pendingInbox(_ handlerID: HandlerID) async throws -> [InboxEvent] { try await base.pendingInbox(handlerID) }
    func pendingInbox(of handlerIDs: [HandlerID]) async throws -> [HandlerID: [InboxEvent]] {
        try await base.pendingInbox(of: handlerIDs)
    }
    func cancel(_ handlerID: HandlerID) async throws -> CancelOutcome { try await base.cancel(handlerID) }
    func delete(_ handlerID: HandlerID, run runID: String) async throws -> Bool {
        try await base.delete(handlerID, run: runID)
    }
    func leaseHistory(_ handlerID: HandlerID) async throws -> [LeaseChange] { try await base.leaseHistory(handlerID) }
    func recentLeaseChanges(limit: Int) async throws -> [LeaseChange] {
        try await base.recentLeaseChanges(limit: limit)
    }
    func purgeFinished(olderThan age: Duration, limit: Int) async throws -> [HandlerID] {
        try await base.purgeFinished(olderThan: age, limit: limit)
    }
    /// How many times a handler's record was read.
    let recordReads = Mutex(0)
    func handler(_ handlerID: HandlerID) async throws -> HandlerRecord? {
        recordReads.withLock { $0 += 1 }
        return try await base.handler(handlerID)
    }
    func handlers(_ filter: HandlerFilter) async throws -> [HandlerRecord] { try await base.handlers(filter) }
    func events(_ handlerID: HandlerID, after sequence: Int64, limit: Int) async throws -> [LogRecord] {
        try await base.events(handlerID, after: sequence, limit: limit)
    }
    func replicas(aliveWithin ttl: Duration) async throws -> [ReplicaRecord] {
        try await base.replicas(aliveWithin: ttl)
    }
    func counts() async throws -> HandlerCounts { try await base.counts() }
    func failoverCheck(_ handlerIDs: [HandlerID]) async throws -> FailoverCheckAnswer {
        try await base.failoverCheck(handlerIDs)
    }
    func advanceTokens(past token: FencingToken) async throws { try await base.advanceTokens(past: token) }
    func recordCrash(of replica: ReplicaID, handlers: [HandlerID], all: Bool, signal: Int32) async throws
        -> [HandlerID]
    {
        try await base.recordCrash(of: replica, handlers: handlers, all: all, signal: signal)
    }
    func releaseQuarantine(_ handlerID: HandlerID) async throws -> Bool { try await base.releaseQuarantine(handlerID) }
    func preventCreation(_ handler: NewHandler, reason: String?) async throws -> HandlerRecord? {
        try await base.preventCreation(handler, reason: reason)
    }
}
