import Foundation
import LeaseholdEngine
import LeaseholdRuntime
import LeaseholdStore
import Logging
import CoreMetrics
import Metrics
import ServiceLifecycle
import Synchronization

/// One per replica process. Registers the replica, claims and renews leases, runs the handlers it
/// holds, hibernates idle ones, reloads on demand (single-flight per handler id), hands handlers
/// off on graceful shutdown, and stops any handler whose lease it can no longer prove.
public final class Coordinator: Service, Sendable {
    /// Why a live handler is being stopped; decides what happens after its runtime returns.
    enum StopReason: Sendable {
        case hibernate
        case handoff
        case leaseLost
    }

    final class LiveHandler: Sendable {
        let id: HandlerID
        let lease: Lease
        let runtime: HandlerRuntime
        let workflow: Workflow
        let claimedAt: ContinuousClock.Instant
        let stopReason = Mutex<StopReason?>(nil)
        /// Finishes when the handler's task has ended (after hibernate / release).
        let ended: AsyncStream<Void>
        let endedContinuation: AsyncStream<Void>.Continuation

        init(id: HandlerID, lease: Lease, runtime: HandlerRuntime, workflow: Workflow) {
            self.id = id
            self.lease = lease
            self.runtime = runtime
            self.workflow = workflow
            self.claimedAt = .now
            (ended, endedContinuation) = AsyncStream.makeStream(of: Void.self)
        }

        func stop(_ reason: StopReason) {
            let first = stopReason.withLock { current -> Bool in
                guard current == nil else { return false }
                current = reason
                return true
            }
            if first { runtime.stop(reason == .leaseLost ? .abandon : .drain) }
        }
    }

    struct State {
        var live: [HandlerID: LiveHandler] = [:]
        var loading: [HandlerID: [CheckedContinuation<Void, Never>]] = [:]
        /// Monotonic time at which the last successful renewal was *sent*.
        var lastRenewal: ContinuousClock.Instant?
        var shuttingDown = false
        var selfFences = 0
        var rejectedWrites = 0
        /// Handlers with a checkpoint in flight, and since when.
        var writing: [HandlerID: ContinuousClock.Instant] = [:]
        /// Leases the last renewal returned that had no runtime here.
        var unrunLeases: Set<HandlerID> = []
        /// How many handlers have left memory here (finished, hibernated, handed off or lost).
        var departed = 0
    }

    public let store: any HandlerStore
    public let registry: WorkflowRegistry
    public let configuration: CoordinatorConfiguration
    let logger: Logger
    let state = Mutex(State())
    let metrics = CoordinatorMetrics()
    private let jobs: AsyncStream<LiveHandler>
    private let jobContinuation: AsyncStream<LiveHandler>.Continuation

    public init(store: any HandlerStore, registry: WorkflowRegistry, configuration: CoordinatorConfiguration, logger: Logger) {
        self.store = store
        self.registry = registry
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: LogKeys.replicaID] = "\(configuration.replicaID)"
        self.logger = logger
        (jobs, jobContinuation) = AsyncStream.makeStream(of: LiveHandler.self)
    }

    public var replicaID: ReplicaID { configuration.replicaID }

    // MARK: - Service

    public func run() async throws {
        try await registerUntilDone()
        logger.info("replica registered", metadata: [LogKeys.address: "\(configuration.address)"])
        await withTaskGroup(of: Void.self) { loops in
            loops.addTask { await self.heartbeatLoop() }
            loops.addTask { await self.selfFenceLoop() }
            loops.addTask { await self.claimLoop() }
            loops.addTask { await self.wakeupLoop() }
            if configuration.idleTimeout != nil {
                loops.addTask { await self.idleLoop() }
            }
            loops.addTask { await self.memoryLoop() }
            await withGracefulShutdownHandler {
                await withDiscardingTaskGroup { handlers in
                    for await handler in jobs {
                        handlers.addTask { await self.runHandler(handler) }
                    }
                }
            } onGracefulShutdown: {
                self.beginHandoff()
            }
            let handedOff = state.withLock { $0.shuttingDown }
            if handedOff {
                do {
                    try await bounded(configuration.leaseTTL) { try await self.store.deregister(self.replicaID) }
                } catch {
                    logger.warning("deregister failed", metadata: [LogKeys.error: "\(error)"])
                }
                logger.info("replica stopped")
            }
            loops.cancelAll()
        }
    }

    private func registerUntilDone() async throws {
        var delay = Duration.milliseconds(100)
        while true {
            let sent = ContinuousClock.now
            do {
                try await store.register(replicaID, address: configuration.address, ttl: configuration.leaseTTL)
                state.withLock { $0.lastRenewal = sent }
                return
            } catch {
                logger.warning("registration failed, retrying", metadata: [LogKeys.error: "\(error)"])
                try await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(2))
            }
        }
    }

    /// Stops taking work, stops every handler with a final checkpoint and releases its lease.
    private func beginHandoff() {
        let handlers = state.withLock { state -> [LiveHandler] in
            state.shuttingDown = true
            return Array(state.live.values)
        }
        logger.info("handing off", metadata: [LogKeys.count: "\(handlers.count)"])
        for handler in handlers { handler.stop(.handoff) }
        jobContinuation.finish()
    }

    /// True once registered and renewing, and not shutting down (`/ready`).
    public var isReady: Bool {
        state.withLock { state in
            guard !state.shuttingDown, let last = state.lastRenewal else { return false }
            return ContinuousClock.now - last < configuration.leaseTTL
        }
    }

    /// Self-fence actions and writes the store rejected, since start.
    public var fenceCounts: (selfFences: Int, rejectedWrites: Int) {
        state.withLock { ($0.selfFences, $0.rejectedWrites) }
    }

    public var liveHandlerIDs: [HandlerID] { state.withLock { Array($0.live.keys) } }

    /// Hibernates a live handler now, as the idle sweep would, and returns once it has left memory.
    public func hibernateNow(_ id: HandlerID) async {
        guard let handler = state.withLock({ $0.live[id] }) else { return }
        handler.stop(.hibernate)
        for await _ in handler.ended {}
    }

    /// The runtime of a handler live on this replica (for inspection; nil when not live here).
    public func runtime(of id: HandlerID) -> HandlerRuntime? { state.withLock { $0.live[id]?.runtime } }

    // MARK: - Loops

    private func heartbeatLoop() async {
        while !Task.isCancelled {
            do { try await Task.sleep(for: configuration.heartbeatInterval) } catch { return }
            await heartbeatOnce()
        }
    }

    func heartbeatOnce() async {
        let sent = ContinuousClock.now
        // A write that has not returned within half a TTL is stuck (a dead connection that never
        // errors): stop renewing that lease so another replica takes the handler over; the token
        // rejects the stuck write should it ever land.
        let stuck = state.withLock { state in
            state.writing.filter { sent - $0.value > configuration.leaseTTL / 2 }.map(\.key)
        }
        if !stuck.isEmpty {
            logger.warning("checkpoint stuck, letting lease expire", metadata: [LogKeys.count: "\(stuck.count)"])
        }
        let held: [HandlerID: FencingToken]
        do {
            held = try await store.heartbeat(
                replicaID, address: configuration.address, ttl: configuration.leaseTTL, excluding: stuck)
        } catch {
            metrics.renewFailures.increment()
            logger.warning("lease renewal failed", metadata: [LogKeys.error: "\(error)"])
            return
        }
        metrics.renewLatency.recordInterval(since: sent)
        let (lost, orphans) = state.withLock { state -> ([LiveHandler], [HandlerID: FencingToken]) in
            if let last = state.lastRenewal, sent - last > configuration.leaseTTL {
                logger.warning("lease renewed late", metadata: [LogKeys.elapsed: "\(sent - last)"])
            }
            state.lastRenewal = sent
            // Only handlers taken before the renewal was sent can be missing from its answer
            // because their lease is gone; one claimed or created meanwhile may simply be newer,
            // and one that finished or is being stopped (hibernated, handed off) gave it up.
            let lost = state.live.values.filter { handler in
                handler.claimedAt < sent && held[handler.id] != handler.lease.token
                    && handler.stopReason.withLock({ $0 == nil }) && !handler.runtime.state.status.isFinished
            }
            // A lease held with no runtime here is an orphan only when two renewals in a row saw it
            // so: one acquired just before this renewal may not have started its runtime yet.
            let unrun = held.filter { state.live[$0.key] == nil && state.loading[$0.key] == nil }
            let orphans = unrun.filter { state.unrunLeases.contains($0.key) }
            state.unrunLeases = Set(unrun.keys)
            return (lost, orphans)
        }
        metrics.leasesHeld.record(held.count)
        // The renewal is a write the database refused for these leases: count them with the
        // checkpoints it refused, so "fenced by the database" has one figure.
        if !lost.isEmpty { state.withLock { $0.rejectedWrites += lost.count } }
        for handler in lost {
            logger.warning("lease lost", metadata: [
                LogKeys.handlerID: "\(handler.id)", LogKeys.fencingToken: "\(handler.lease.token)",
            ])
            handler.stop(.leaseLost)
        }
        // Leases this replica holds but runs no handler for (its runtime failed): give them back.
        for (id, token) in orphans {
            let lease = Lease(handlerID: id, replicaID: replicaID, token: token)
            do {
                try await store.release(nil, lease: lease)
                logger.info("lease released", metadata: [LogKeys.handlerID: "\(id)", LogKeys.reason: "orphaned"])
            } catch {
                logger.debug("orphan release failed", metadata: [LogKeys.handlerID: "\(id)", LogKeys.error: "\(error)"])
            }
        }
    }

    /// Whether this replica can still prove its leases by its own monotonic clock.
    func leasesProvable() -> Bool {
        guard configuration.selfFencing else { return true }
        return state.withLock { state in
            guard let last = state.lastRenewal else { return false }
            return ContinuousClock.now - last < configuration.selfFenceAfter
        }
    }

    private func selfFenceLoop() async {
        while !Task.isCancelled {
            do { try await Task.sleep(for: .milliseconds(50)) } catch { return }
            if !leasesProvable() { selfFence() }
        }
    }

    private func selfFence() {
        let handlers = state.withLock { state -> [LiveHandler] in
            let handlers = Array(state.live.values.filter { $0.stopReason.withLock { $0 } == nil })
            if !handlers.isEmpty { state.selfFences += 1 }
            return handlers
        }
        guard !handlers.isEmpty else { return }
        metrics.selfFences.increment()
        logger.warning("self-fenced", metadata: [LogKeys.count: "\(handlers.count)"])
        for handler in handlers { handler.stop(.leaseLost) }
    }

    private func claimLoop() async {
        while !Task.isCancelled {
            do { try await Task.sleep(for: configuration.claimInterval) } catch { return }
            await claimOnce()
        }
    }

    func claimOnce() async {
        guard state.withLock({ !$0.shuttingDown }), leasesProvable() else { return }
        do {
            let claimed = try await store.claim(replicaID, limit: configuration.claimBatch, only: nil)
            for handler in claimed {
                metrics.failovers.increment()
                await launch(handler, reason: "claimed")
            }
        } catch {
            logger.debug("claim failed", metadata: [LogKeys.error: "\(error)"])
        }
    }

    private func wakeupLoop() async {
        for await id in store.signals.inboxWakeups {
            await wake(HandlerID(id))
        }
    }

    /// An inbox event arrived for `id` (or its lease was taken away by a cancel).
    func wake(_ id: HandlerID) async {
        if let handler = state.withLock({ $0.live[id] }) {
            do {
                guard let record = try await store.handler(id), record.status == .running,
                    record.fencingToken == handler.lease.token
                else {
                    logger.info("lease taken away", metadata: [LogKeys.handlerID: "\(id)"])
                    handler.stop(.leaseLost)
                    return
                }
                let pending = try await store.pendingInbox(id)
                handler.runtime.deliver(pending.map { Delivery(inboxID: $0.id, event: $0.event) })
            } catch {
                logger.debug("wake-up failed", metadata: [LogKeys.handlerID: "\(id)", LogKeys.error: "\(error)"])
            }
        } else {
            _ = try? await reload(id)
        }
    }

    private func idleLoop() async {
        guard let idleTimeout = configuration.idleTimeout else { return }
        let period = min(idleTimeout / 4, .seconds(1))
        while !Task.isCancelled {
            do { try await Task.sleep(for: period) } catch { return }
            sweepIdle(idleTimeout)
        }
    }

    /// Returns freed heap to the system once handlers have left memory (hibernated or finished),
    /// so that a hibernated handler costs no resident memory here.
    private func memoryLoop() async {
        var trim = MemoryTrim()
        while !Task.isCancelled {
            do { try await Task.sleep(for: .seconds(1)) } catch { return }
            if trim.observe(departed: state.withLock { $0.departed }) {
                logger.debug("returned freed memory to the system")
            }
        }
    }

    /// Hibernates every handler that has only waited for `idleTimeout` and has no timer due sooner.
    func sweepIdle(_ idleTimeout: Duration) {
        let now = ContinuousClock.now
        let wall = Date().timeIntervalSince1970
        let limit = Double(idleTimeout.components.seconds) + Double(idleTimeout.components.attoseconds) * 1e-18
        let handlers = state.withLock { Array($0.live.values) }
        for handler in handlers {
            guard let since = handler.runtime.idleSince, now - since >= idleTimeout else { continue }
            if let deadline = handler.runtime.state.nextDeadline, deadline - wall < limit { continue }
            handler.stop(.hibernate)
        }
    }

    // MARK: - Running handlers

    /// Starts a runtime for a handler this replica has just claimed or created.
    func launch(_ claimed: ClaimedHandler, reason: String) async {
        let id = claimed.record.id
        guard let workflow = try? registry.workflow(claimed.record.workflowName) else {
            logger.error("unknown workflow for claimed handler", metadata: [
                LogKeys.handlerID: "\(id)", LogKeys.workflow: "\(claimed.record.workflowName)",
            ])
            try? await store.release(nil, lease: claimed.lease)
            return
        }
        let persistence = LeasePersistence(coordinator: self, lease: claimed.lease)
        let runtime = HandlerRuntime(
            handlerID: id.rawValue, workflow: workflow, state: claimed.state, persistence: persistence,
            maxConcurrentSteps: configuration.maxConcurrentSteps)
        let handler = LiveHandler(id: id, lease: claimed.lease, runtime: runtime, workflow: workflow)
        let accepted = state.withLock { state -> Bool in
            guard !state.shuttingDown, state.live[id] == nil else { return false }
            state.live[id] = handler
            return true
        }
        guard accepted else {
            try? await store.release(nil, lease: claimed.lease)
            return
        }
        metrics.claims.increment()
        logger.info("claimed", metadata: [
            LogKeys.handlerID: "\(id)", LogKeys.fencingToken: "\(claimed.lease.token)", LogKeys.reason: "\(reason)",
        ])
        jobContinuation.yield(handler)
        if let pending = try? await store.pendingInbox(id) {
            runtime.deliver(pending.map { Delivery(inboxID: $0.id, event: $0.event) })
        }
    }

    private func runHandler(_ handler: LiveHandler) async {
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
                switch handler.stopReason.withLock({ $0 }) {
                case .hibernate:
                    try await hibernate(handler, final, log: log)
                case .handoff:
                    // Bounded: with the database gone, the lease simply expires and another replica resumes.
                    try await bounded(configuration.leaseTTL) {
                        try await self.store.release(Checkpoint(state: final, log: [], consumedInbox: []), lease: handler.lease)
                    }
                    metrics.handoffs.increment()
                    log.info("handed off", metadata: [LogKeys.fencingToken: "\(handler.lease.token)"])
                case .leaseLost, nil:
                    log.info("stopped", metadata: [LogKeys.reason: "lease lost"])
                }
            }
        } catch StoreError.leaseLost {
            state.withLock { $0.rejectedWrites += 1 }
            metrics.fencedWrites.increment()
            log.warning("lease lost", metadata: [
                LogKeys.fencingToken: "\(handler.lease.token)", LogKeys.reason: "write rejected",
            ])
        } catch {
            log.error("handler stopped by an error", metadata: [LogKeys.error: "\(error)"])
        }
    }

    private func hibernate(_ handler: LiveHandler, _ final: HandlerState, log: Logger) async throws {
        let wakeAt = final.nextDeadline.map { Date(timeIntervalSince1970: $0) }
        let done = try await store.hibernate(
            Checkpoint(state: final, log: [], consumedInbox: []), wakeAt: wakeAt, lease: handler.lease)
        if done {
            metrics.hibernations.increment()
            log.info("hibernated", metadata: [LogKeys.fencingToken: "\(handler.lease.token)"])
            return
        }
        // An event reached the inbox between idle and hibernate: keep running, nothing is lost.
        log.debug("hibernation refused, inbox not empty")
        state.withLock { state in
            if state.live[handler.id] === handler { state.live[handler.id] = nil }
        }
        guard let record = try await store.handler(handler.id) else { return }
        await launch(ClaimedHandler(record: record, lease: handler.lease, state: final), reason: "inbox not empty")
    }

    /// Makes sure the handler runs somewhere: when it is claimable (hibernated with work, or
    /// orphaned), claims it here and starts it. Concurrent callers for one id share one load.
    /// - Returns: true when the handler is live on this replica afterwards.
    @discardableResult
    public func reload(_ id: HandlerID) async throws -> Bool {
        enum Role { case live, leader, follower }
        let role = state.withLock { state -> Role in
            if state.live[id] != nil { return .live }
            if state.loading[id] != nil { return .follower }
            state.loading[id] = []
            return .leader
        }
        switch role {
        case .live:
            return true
        case .follower:
            await withCheckedContinuation { continuation in
                let appended = state.withLock { state -> Bool in
                    guard state.loading[id] != nil else { return false }
                    state.loading[id]!.append(continuation)
                    return true
                }
                if !appended { continuation.resume() }
            }
            return state.withLock { $0.live[id] != nil }
        case .leader:
            defer {
                let waiters = state.withLock { $0.loading.removeValue(forKey: id) ?? [] }
                for waiter in waiters { waiter.resume() }
            }
            guard state.withLock({ !$0.shuttingDown }), leasesProvable() else { return false }
            let started = ContinuousClock.now
            let claimed = try await store.claim(replicaID, limit: 1, only: id)
            guard let handler = claimed.first else { return false }
            await launch(handler, reason: handler.record.hibernated ? "reload" : "orphaned")
            metrics.reloads.increment()
            metrics.reloadLatency.recordInterval(since: started)
            return true
        }
    }
}

/// An operation ran past its time limit.
public struct OperationTimedOut: Error, CustomStringConvertible {
    public var description: String { "timed out" }
}

/// Runs an operation with a time limit (shutdown must not hang on an unreachable database).
/// The operation is cancelled when the limit passes; it must honour cancellation.
/// - Throws: `OperationTimedOut`, or the operation's error.
public func bounded<T: Sendable>(_ limit: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: limit)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else { throw OperationTimedOut() }
        return value
    }
}

extension Metrics.Timer {
    func recordInterval(since start: ContinuousClock.Instant) {
        let elapsed = ContinuousClock.now - start
        recordNanoseconds(elapsed.components.seconds * 1_000_000_000 + elapsed.components.attoseconds / 1_000_000_000)
    }
}
