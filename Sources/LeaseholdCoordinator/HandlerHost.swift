import CoreMetrics
import Foundation
import LeaseholdEngine
import LeaseholdKit
import LeaseholdRuntime
import LeaseholdStore
import Logging
import Synchronization

/// The handlers live on this replica: the table of them, launching a runtime for a lease just
/// acquired, running it to its end, and what happens after (finished, hibernated, handed off, or
/// stopped because the lease is gone). Delivery of events and single-flight reloads are in
/// `HandlerHost+Delivery.swift`.
final class HandlerHost: ReplicaPart, Sendable {
    struct State {
        var live: [HandlerID: LiveHandler] = [:]
        /// Handlers being loaded here (single-flight: see `reload`).
        var loading: [HandlerID: UInt64] = [:]
        /// Loads begun here (numbers them).
        var loads: UInt64 = 0
        var shuttingDown = false
        /// How many handlers have left memory here (finished, hibernated, handed off or lost).
        var departed = 0
    }

    let store: any HandlerStore
    let registry: WorkflowRegistry
    let context: ReplicaContext
    let keeper: LeaseKeeper
    /// Creates the children the runtimes' steps ask for (bound by the coordinator).
    let children = ChildStarts()
    let state = Mutex(State())
    /// Reloads waiting for another reload of the same handler to end.
    let loadFollowers = WaiterRegistry<HandlerID>()
    let completions = Mutex(Completions())
    private let jobs: AsyncStream<LiveHandler>
    private let jobContinuation: AsyncStream<LiveHandler>.Continuation

    init(store: any HandlerStore, registry: WorkflowRegistry, context: ReplicaContext, keeper: LeaseKeeper) {
        self.store = store
        self.registry = registry
        self.context = context
        self.keeper = keeper
        (jobs, jobContinuation) = AsyncStream.makeStream(of: LiveHandler.self)
    }

    // MARK: - The table

    func handler(_ id: HandlerID) -> LiveHandler? { state.withLock { $0.live[id] } }

    var liveHandlers: [LiveHandler] { state.withLock { Array($0.live.values) } }

    /// Live here or being loaded here.
    func isHosting(_ id: HandlerID) -> Bool { state.withLock { $0.live[id] != nil || $0.loading[id] != nil } }

    /// What the lease machine sees of this host now, and the live handler behind each lease.
    func leaseView() -> (view: LeaseMachine.HostView, handlers: [Lease: LiveHandler]) {
        let (live, loading) = state.withLock { (Array($0.live.values), Set($0.loading.keys)) }
        var handlers: [Lease: LiveHandler] = [:]
        let hosted = live.map { handler in
            handlers[handler.lease] = handler
            return LeaseMachine.Hosted(
                lease: handler.lease, heldSince: handler.heldSince, stopping: handler.stopReason.withLock { $0 != nil },
                finished: handler.runtime.state.status.isFinished)
        }
        return (LeaseMachine.HostView(live: hosted, loading: loading), handlers)
    }

    var isShuttingDown: Bool { state.withLock { $0.shuttingDown } }

    var departed: Int { state.withLock { $0.departed } }

    /// Stops handlers whose lease is gone or unprovable, writing nothing more, and takes them out
    /// of the table at once: a request for one of them reads the store from now on, even while a
    /// stuck write of the old runtime is still unwinding.
    func fence(_ handlers: [LiveHandler], reason: String) {
        for handler in handlers {
            handler.stop(.leaseLost)
            state.withLock { state in
                if state.live[handler.id] === handler { state.live[handler.id] = nil }
            }
            logger.info("stopped", metadata: [LogKeys.handlerID: "\(handler.id)", LogKeys.reason: "\(reason)"])
        }
    }

    // MARK: - Running

    /// Runs every launched handler as a child task until hand-off has stopped them all.
    func runAll() async {
        await withDiscardingTaskGroup { handlers in
            for await handler in jobs {
                handlers.addTask { await self.run(handler) }
            }
        }
    }

    /// Stops taking work, stops every handler with a final checkpoint and releases its lease.
    func beginHandoff() {
        let handlers = state.withLock { state -> [LiveHandler] in
            state.shuttingDown = true
            return Array(state.live.values)
        }
        logger.info("handing off", metadata: [LogKeys.count: "\(handlers.count)"])
        for handler in handlers { handler.stop(.handoff) }
        jobContinuation.finish()
    }

    /// Counted for a suspect's isolation when its pending inbox was not read with the lease (it is
    /// read after launch): as many events as a replica coalesces in one checkpoint, generously.
    static let unknownPendingInbox = 32

    /// Starts a runtime for a handler this replica has just claimed or created, and hands it its
    /// pending inbox (the start event of a new handler, the events that woke a hibernated one):
    /// the one the store read with the lease, or else read now.
    /// - Parameter unwritten: the handler is not written yet; its first checkpoint creates it.
    /// - Returns: whether it was launched (not when shutting down, or already live here).
    @discardableResult
    func launch(_ claimed: ClaimedHandler, reason: String, unwritten: UnwrittenRun? = nil) async -> Bool {
        let id = claimed.record.id
        // A handler not yet written is granted when its first checkpoint writes it.
        if unwritten == nil { keeper.granted(claimed.lease, lastSequence: claimed.record.lastSequence) }
        let workflow: Workflow
        do {
            workflow = try registry.workflow(claimed.record.workflowName)
        } catch {
            logger.error(
                "unknown workflow for claimed handler",
                metadata: [
                    LogKeys.handlerID: "\(id)", LogKeys.workflow: "\(claimed.record.workflowName)",
                ])
            if unwritten == nil { await giveBack(claimed.lease, why: "unknown workflow") }
            return false
        }
        let persistence = LeasePersistence(
            store: store, keeper: keeper, context: context, lease: claimed.lease,
            finished: { [self] record in finished(record) }, unwritten: unwritten, children: children)
        let runtime = HandlerRuntime(
            handlerID: id.rawValue, workflow: workflow, state: claimed.state, persistence: persistence,
            maxConcurrentSteps: configuration.maxConcurrentSteps, clock: clock,
            fencingToken: claimed.lease.token.rawValue, checkpointCoalescing: configuration.checkpointCoalescing,
            isolation: configuration.stepIsolation, suspect: claimed.suspect,
            pendingInbox: claimed.pendingInbox?.count ?? Self.unknownPendingInbox)
        if claimed.suspect {
            metrics.suspectsLaunched.increment()
            logger.warning(
                "suspect handler: a replica died of a fault during one of its steps; its steps run isolated",
                metadata: [LogKeys.handlerID: "\(id)", "isolated": "\(runtime.isolating)"])
        }
        let handler = LiveHandler(
            id: id, lease: claimed.lease, runtime: runtime, workflow: workflow, claimedAt: clock.now,
            unwritten: unwritten)
        // Enter the table and the run queue in one step: hand-off either sees the handler (and
        // stops it) or this launch sees the shutdown (and gives the lease back).
        let accepted = state.withLock { state -> Bool in
            guard !state.shuttingDown, state.live[id] == nil else { return false }
            guard case .enqueued = jobContinuation.yield(handler) else { return false }
            state.live[id] = handler
            return true
        }
        guard accepted else {
            if unwritten == nil { await giveBack(claimed.lease, why: "not accepted") }
            return false
        }
        metrics.claims.increment()
        logger.info(
            "claimed",
            metadata: [
                LogKeys.handlerID: "\(id)", LogKeys.fencingToken: "\(claimed.lease.token)", LogKeys.reason: "\(reason)",
            ])
        if let pending = claimed.pendingInbox {
            // Read with the lease: events appended since reach the handler by wake-up or
            // reconciliation, like any event for a live handler.
            handler.deliver(pending)
        } else {
            await deliverPending(handler)
        }
        return true
    }

    /// Releases a lease this replica will not run. A failure is logged: the lease then lapses
    /// with the next renewal that finds it unrun (see `LeaseKeeper.renewOnce`).
    private func giveBack(_ lease: Lease, why: String) async {
        do {
            try await storeCall { try await $0.release(nil, lease: lease) }
        } catch {
            logger.warning(
                "release failed",
                metadata: [
                    LogKeys.handlerID: "\(lease.handlerID)", LogKeys.reason: "\(why)", LogKeys.error: "\(error)",
                ])
        }
    }

    private func run(_ handler: LiveHandler) async {
        var log = logger
        log[metadataKey: LogKeys.handlerID] = "\(handler.id)"
        defer {
            state.withLock { state in
                if state.live[handler.id] === handler { state.live[handler.id] = nil }
                state.departed += 1
            }
            store.signals.logChanged(handler.id.rawValue)  // wakes `awaitCompletion` waiters
            handler.endedContinuation.finish()
        }
        do {
            switch try await handler.runtime.run() {
            case .finished(let final):
                metrics.handlersFinished.increment()
                log.info("finished", metadata: [LogKeys.status: "\(final.status.rawValue)"])
            case .stopped(let final):
                if let unwritten = handler.unwritten, !unwritten.isWritten,
                    handler.stopReason.withLock({ $0 }) != .leaseLost
                {
                    try await writeAndHandOff(handler, unwritten, final: final)
                    log.info("written and handed off before its first checkpoint")
                    return
                }
                switch handler.stopReason.withLock({ $0 }) {
                case .hibernate:
                    try await hibernate(handler, final, log: log)
                case .handoff:
                    // Bounded: with the database gone, the lease simply expires and another replica resumes.
                    try await withTimeLimit(configuration.leaseTTL, clock: clock) {
                        try await self.store.release(
                            Checkpoint(state: final, log: [], consumedInbox: []), lease: handler.lease)
                    }
                    metrics.handoffs.increment()
                    log.info("handed off", metadata: [LogKeys.fencingToken: "\(handler.lease.token)"])
                case .leaseLost, nil:
                    log.info("stopped", metadata: [LogKeys.reason: "lease lost"])
                }
            }
        } catch let error as StoreError where error.isRefusedWrite {
            // Counted once: a lease already found lost by the renewal was counted there.
            if handler.stopReason.withLock({ $0 }) != .leaseLost { keeper.recordRejectedWrites() }
            log.warning(
                "lease lost",
                metadata: [
                    LogKeys.fencingToken: "\(handler.lease.token)", LogKeys.reason: "write rejected: \(error)",
                ])
            // A refusal may also be a database that lost what it acknowledged: forgotten only once
            // a failover check after it found nothing missing (`LeaseKeeper+FailoverCheck`).
            keeper.forgetAfterCheck([handler.lease])
        } catch {
            log.error("handler stopped by an error", metadata: [LogKeys.error: "\(error)"])
        }
    }

    private func hibernate(_ handler: LiveHandler, _ final: HandlerState, log: Logger) async throws {
        // An event delivered just before the stop may have started a step that the stop
        // cancelled: such a handler has work to do and is not idle; hibernating it would leave it
        // waiting for a wake-up that never comes. Keep it running here instead.
        guard final.isQuiescent else {
            log.debug("hibernation skipped, work in flight")
            return try await keepRunning(handler, final, reason: "work in flight")
        }
        let wakeAt = final.nextDeadline.map { Date(timeIntervalSince1970: $0) }
        let done = try await keeper.writing(handler.lease) {
            try await storeCall {
                try await $0.hibernate(
                    Checkpoint(state: final, log: [], consumedInbox: []), wakeAt: wakeAt, lease: handler.lease)
            }
        }
        if done {
            metrics.hibernations.increment()
            log.info("hibernated", metadata: [LogKeys.fencingToken: "\(handler.lease.token)"])
            return
        }
        // An event reached the inbox between idle and hibernate: keep running, nothing is lost.
        log.debug("hibernation refused, inbox not empty")
        try await keepRunning(handler, final, reason: "inbox not empty")
    }

    /// A handler stopped to hibernate that must not: launched again here under the same lease,
    /// from the state it stopped in.
    private func keepRunning(_ handler: LiveHandler, _ final: HandlerState, reason: String) async throws {
        state.withLock { state in
            if state.live[handler.id] === handler { state.live[handler.id] = nil }
        }
        guard let record = try await storeCall({ try await $0.handler(handler.id) }) else { return }
        await launch(
            ClaimedHandler(record: record, lease: handler.lease, state: final, suspect: handler.runtime.isolating),
            reason: reason)
    }

    /// A store call bounded by one lease TTL, for work done on behalf of a handler: with the
    /// database unreachable (a pool waiting to reconnect), the call gives up rather than hold the
    /// handler's task — and with it hand-off and shutdown — forever. A lease whose write timed out
    /// lapses and is taken over; its token rejects the write should it land later.
    func storeCall<T: Sendable>(_ body: @escaping @Sendable (any HandlerStore) async throws -> T) async throws -> T {
        let store = self.store
        return try await withTimeLimit(configuration.leaseTTL, clock: clock) { try await body(store) }
    }
}
