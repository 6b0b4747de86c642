import Foundation
import LeaseholdEngine
import LeaseholdKit
import LeaseholdStore
import Synchronization

/// One replica's connection to the simulated database: the shared in-memory store behind a fault
/// layer. Every call travels (a delay drawn from the seed), may be lost on the way (nothing
/// applied), may have its answer lost after it was applied (the caller sees `unavailable`, as
/// with a commit whose answer never came), and fails while the link is cut (a partition, a
/// database restart, a dead process). A paused process's calls wait until it resumes, then land.
/// Each write the store applied is recorded in the history with the lease it was made under.
final class SimulatedLink: HandlerStore {
    enum Mode: Sendable, Equatable {
        case up
        /// Every call fails once it has travelled; nothing reaches the database.
        case cut
        /// The process is dead: nothing it sends reaches the database, ever.
        case dead
    }

    struct Faults {
        var mode = Mode.up
        /// Calls wait until this instant before they travel (a paused process).
        var heldUntil = Duration.zero
        /// Until this instant, writes (checkpoints) never answer until cancelled (a dead connection
        /// that never errors; the replica's stuck-write fence must act).
        var writesStuckUntil = Duration.zero
        /// Until this instant, the database's notifications do not reach this process (silently).
        var deafUntil = Duration.zero
    }

    let base: InMemoryStore
    /// This process's own notifications: the database's, less those lost.
    let signals: StoreSignals
    let replica: ReplicaID
    let clock: SimulatedClock
    let chaos: Chaos
    let history: History
    /// The node that answers now (its timeline moves at a failover).
    let node: @Sendable () -> DatabaseNode
    private let faults = Mutex(Faults())

    init(
        base: InMemoryStore, replica: ReplicaID, clock: SimulatedClock, chaos: Chaos, history: History,
        node: @escaping @Sendable () -> DatabaseNode
    ) {
        self.node = node
        self.base = base
        self.replica = replica
        self.clock = clock
        self.chaos = chaos
        self.history = history
        signals = StoreSignals(clock: ReplicaClock(clock))
        base.signals.forward { [weak self] change in self?.hear(change) }
    }

    /// A notification of the database: told to this process's signals unless lost.
    private func hear(_ change: StoreSignals.Change) {
        let deaf = faults.withLock { $0.mode != .up || $0.deafUntil > clock.now.offset }
        guard !deaf, !chaos.loseNotification() else { return }
        switch change {
        case .log(let id): signals.logChanged(id)
        case .inbox(let id): signals.inboxChanged(id)
        }
    }

    func deafen(until time: Duration) { faults.withLock { $0.deafUntil = max($0.deafUntil, time) } }

    func set(_ mode: Mode) { faults.withLock { if $0.mode != .dead { $0.mode = mode } } }
    func hold(until time: Duration) { faults.withLock { $0.heldUntil = max($0.heldUntil, time) } }
    func stickWrites(until time: Duration) { faults.withLock { $0.writesStuckUntil = max($0.writesStuckUntil, time) } }

    private var mode: Mode { faults.withLock { $0.mode } }

    /// One call: held while paused, travels, may be lost either way.
    private func call<T: Sendable>(write: Bool = false, _ body: () async throws -> T) async throws -> T {
        let held = faults.withLock { $0.heldUntil }
        if held > clock.now.offset { try await clock.sleep(until: .init(offset: held)) }
        try await clock.sleep(for: chaos.latency())
        guard mode == .up else { throw StoreError.unavailable("simulated: link \(mode)") }
        if chaos.loseRequest() { throw StoreError.unavailable("simulated: request lost") }
        if write, faults.withLock({ $0.writesStuckUntil > clock.now.offset }) {
            try await clock.sleep(for: .seconds(3600))  // until cancelled
        }
        let result = try await body()
        try await clock.sleep(for: chaos.latency())
        if mode != .up || chaos.loseAnswer() { throw StoreError.unavailable("simulated: answer lost") }
        return result
    }

    private func record(_ kind: History.Write.Kind, _ lease: Lease, lastSequence: Int64) {
        history.write(.init(at: clock.now.offset, kind: kind, lease: lease, lastSequence: lastSequence))
    }

    // MARK: - Registration and leases

    func register(_ replica: ReplicaID, address: String, ttl: Duration) async throws -> DatabaseNode? {
        try await call {
            _ = try await base.register(replica, address: address, ttl: ttl)
            history.registered(replica, at: clock.now.offset)
            return node()
        }
    }
    func renew(_ replica: ReplicaID, address: String, ttl: Duration, excluding: [HandlerID]) async throws
        -> Renewal
    {
        try await call {
            var renewal = try await base.renew(replica, address: address, ttl: ttl, excluding: excluding)
            renewal.database = node()
            renewal.databaseTime = Cluster.epoch + clock.now.offset.seconds
            return renewal
        }
    }
    func deregister(_ replica: ReplicaID) async throws { try await call { try await base.deregister(replica) } }
    func reserveTokens(_ count: Int) async throws -> [FencingToken] {
        try await call { try await base.reserveTokens(count) }
    }
    func claim(_ replica: ReplicaID, limit: Int, only: HandlerID?) async throws -> [ClaimedHandler] {
        try await call {
            let claimed = try await base.claim(replica, limit: limit, only: only)
            for handler in claimed { history.granted(handler.lease, at: clock.now.offset) }
            return claimed
        }
    }
    func advanceTokens(past token: FencingToken) async throws {
        try await call { try await base.advanceTokens(past: token) }
    }
    func trust(_ node: DatabaseNode) {}

    // MARK: - Writes (recorded)

    func create(_ handler: NewHandler, owner: ReplicaID) async throws -> ClaimedHandler {
        try await call(write: true) {
            let claimed = try await base.create(handler, owner: owner)
            history.granted(claimed.lease, at: clock.now.offset)
            record(.create, claimed.lease, lastSequence: -1)
            return claimed
        }
    }
    func create(_ handler: NewHandler, owner: ReplicaID, token: FencingToken, first: Checkpoint)
        async throws -> HandlerRecord?
    {
        try await call(write: true) {
            let record = try await base.create(handler, owner: owner, token: token, first: first)
            history.granted(Lease(handlerID: handler.id, replicaID: owner, token: token), at: clock.now.offset)
            self.record(
                .checkpoint, Lease(handlerID: handler.id, replicaID: owner, token: token),
                lastSequence: first.state.nextSequence - 1)
            return record
        }
    }
    func checkpoint(_ checkpoint: Checkpoint, lease: Lease) async throws -> HandlerRecord? {
        try await call(write: true) {
            let finished = try await base.checkpoint(checkpoint, lease: lease)
            record(.checkpoint, lease, lastSequence: checkpoint.state.nextSequence - 1)
            return finished
        }
    }
    func hibernate(_ checkpoint: Checkpoint, wakeAt: Date?, lease: Lease) async throws -> Bool {
        try await call(write: true) {
            let done = try await base.hibernate(checkpoint, wakeAt: wakeAt, lease: lease)
            if done { record(.hibernate, lease, lastSequence: checkpoint.state.nextSequence - 1) }
            return done
        }
    }
    func release(_ checkpoint: Checkpoint?, lease: Lease) async throws {
        try await call(write: true) {
            try await base.release(checkpoint, lease: lease)
            record(.release, lease, lastSequence: checkpoint.map { $0.state.nextSequence - 1 } ?? -1)
        }
    }

    // MARK: - Inbox, reads, the rest

    func appendInbox(
        _ handlerID: HandlerID, _ event: InboxEvent, accepting: [String]?, from replica: ReplicaID?, claim: Bool
    ) async throws -> InboxReceipt {
        try await call {
            let receipt = try await base.appendInbox(
                handlerID, event, accepting: accepting, from: replica, claim: claim)
            if let claimed = receipt.claimed { history.granted(claimed.lease, at: clock.now.offset) }
            return receipt
        }
    }
    func pendingInbox(_ handlerID: HandlerID) async throws -> [InboxEvent] {
        try await call { try await base.pendingInbox(handlerID) }
    }
    func pendingInbox(of handlerIDs: [HandlerID]) async throws -> [HandlerID: [InboxEvent]] {
        try await call { try await base.pendingInbox(of: handlerIDs) }
    }
    func cancel(_ handlerID: HandlerID) async throws -> CancelOutcome {
        try await call { try await base.cancel(handlerID) }
    }
    func delete(_ handlerID: HandlerID, run runID: String) async throws -> Bool {
        try await call { try await base.delete(handlerID, run: runID) }
    }
    func handler(_ handlerID: HandlerID) async throws -> HandlerRecord? {
        try await call { try await base.handler(handlerID) }
    }
    func handlers(_ filter: HandlerFilter) async throws -> [HandlerRecord] {
        try await call { try await base.handlers(filter) }
    }
    func events(_ handlerID: HandlerID, after sequence: Int64, limit: Int) async throws -> [LogRecord] {
        try await call { try await base.events(handlerID, after: sequence, limit: limit) }
    }
    func purgeFinished(olderThan age: Duration, limit: Int) async throws -> [HandlerID] {
        try await call { try await base.purgeFinished(olderThan: age, limit: limit) }
    }
    func leaseHistory(_ handlerID: HandlerID) async throws -> [LeaseChange] {
        try await call { try await base.leaseHistory(handlerID) }
    }
    func recentLeaseChanges(limit: Int) async throws -> [LeaseChange] {
        try await call { try await base.recentLeaseChanges(limit: limit) }
    }
    func replicas(aliveWithin ttl: Duration) async throws -> [ReplicaRecord] {
        try await call { try await base.replicas(aliveWithin: ttl) }
    }
    func counts() async throws -> HandlerCounts { try await call { try await base.counts() } }
    func failoverCheck(_ handlerIDs: [HandlerID]) async throws -> FailoverCheckAnswer {
        try await call {
            var answer = try await base.failoverCheck(handlerIDs)
            let node = node()
            answer.node = (node.systemIdentifier, node.timeline)
            return answer
        }
    }
    func preventCreation(_ handler: NewHandler, reason: String?) async throws -> HandlerRecord? {
        try await call { try await base.preventCreation(handler, reason: reason) }
    }
    func recordCrash(of replica: ReplicaID, handlers: [HandlerID], all: Bool, signal: Int32) async throws
        -> [HandlerID]
    {
        try await call { try await base.recordCrash(of: replica, handlers: handlers, all: all, signal: signal) }
    }
    func releaseQuarantine(_ handlerID: HandlerID) async throws -> Bool {
        try await call { try await base.releaseQuarantine(handlerID) }
    }
}
