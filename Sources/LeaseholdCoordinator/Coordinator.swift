import LeaseholdEngine
import LeaseholdKit
import LeaseholdRuntime
import LeaseholdStore
import Logging
import ServiceLifecycle

/// One per replica process: the service that composes the replica's parts and runs their loops
/// in one task group.
///
/// - `LeaseKeeper`: registration, renewal, lost leases, stuck writes, self-fencing — the one
///   place where the replica decides whether it may write for a lease.
/// - `HandlerHost`: the live handlers — launch, run, hibernate, hand off, delivery and
///   single-flight reload.
/// - `Claimer`: failover and due work. `IdleSweeper`: the hibernation policy. `MemoryTrim`.
/// - `RetentionSweeper`: deletes finished handlers past the retention.
///
/// On graceful shutdown every handler is stopped with a final checkpoint and its lease released
/// (others take it at once), then the registration is removed. The renewal loop outlives the
/// hand-off, so leases stay valid while their last checkpoints are written.
public final class Coordinator: Service, ReplicaPart, Sendable {
    /// Where handlers, leases and this replica's registration are kept.
    public let store: any HandlerStore
    /// The workflows this replica can run.
    public let registry: WorkflowRegistry
    /// What every part shares: configuration, clock, logger, metrics, signals.
    let context: ReplicaContext
    let keeper: LeaseKeeper
    let host: HandlerHost
    let claimer: Claimer
    let sweeper: IdleSweeper?
    let retention: RetentionSweeper?

    /// How this replica behaves.
    public var configuration: CoordinatorConfiguration { context.configuration }
    /// Awaitable passes of the replica's loops (for tests).
    public var signals: CoordinatorSignals { context.signals }

    /// - Parameters:
    ///   - clock: monotonic and wall time for leases, idleness, timers (a manual clock in tests).
    ///   - ids: where random ids come from (seeded in the simulator).
    public init(
        store: any HandlerStore, registry: WorkflowRegistry, configuration: CoordinatorConfiguration, logger: Logger,
        clock: ReplicaClock = .system, ids: IDSource = .system
    ) {
        self.store = store
        self.registry = registry
        var logger = logger
        logger[metadataKey: LogKeys.replicaID] = "\(configuration.replicaID)"
        let signals = CoordinatorSignals()
        let context = ReplicaContext(
            configuration: configuration, clock: clock, logger: logger, metrics: CoordinatorMetrics(), signals: signals,
            ids: ids)
        self.context = context
        keeper = LeaseKeeper(store: store, context: context)
        host = HandlerHost(store: store, registry: registry, context: context, keeper: keeper)
        claimer = Claimer(store: store, context: context)
        sweeper = configuration.idleTimeout.map { IdleSweeper(idleTimeout: $0, context: context) }
        retention = configuration.retention.map { RetentionSweeper(retention: $0, store: store, context: context) }
        host.children.bind { [weak self] request, parent in
            guard let self else { throw CoordinatorError.shuttingDown }
            try await self.startChild(request, parent: parent)
        }
    }

    /// This replica's id (`configuration.replicaID`).
    public var replicaID: ReplicaID { configuration.replicaID }

    // MARK: - Service

    /// - Throws: `CoordinatorError.replicaIDTaken` when another process registered this replica
    ///   id after this one (this one's handlers are stopped by then).
    public func run() async throws {
        try await keeper.register()
        signals.passed(.registration)
        logger.info("replica registered", metadata: [LogKeys.address: "\(configuration.address)"])
        await withTaskGroup(of: Void.self) { loops in
            loops.addTask { await self.keeper.runRenewals(host: self.host) }
            loops.addTask { await self.keeper.runSelfFencing(host: self.host) }
            loops.addTask { await self.keeper.runDatabaseMoveChecks(host: self.host) }
            loops.addTask { await self.keeper.runOrphanReleases() }
            loops.addTask { await self.claimer.run(host: self.host) }
            loops.addTask { await self.host.runWakeups() }
            loops.addTask { await self.runReconciliation() }
            if let sweeper {
                loops.addTask { await sweeper.run(host: self.host) }
            }
            if let retention {
                loops.addTask { await retention.run() }
            }
            loops.addTask { await MemoryTrim.run(host: self.host, clock: self.clock, logger: self.logger) }
            await withGracefulShutdownHandler {
                await host.runAll()
            } onGracefulShutdown: {
                self.host.beginHandoff()
            }
            if !keeper.isSuperseded, host.isShuttingDown {
                await keeper.deregister()
                logger.info("replica stopped")
            }
            loops.cancelAll()
        }
        if keeper.isSuperseded { throw CoordinatorError.replicaIDTaken(replicaID) }
    }

    /// Reconciles the pending inbox of every live handler once per renewal period, so that an
    /// accepted event reaches its live handler within one period whatever notification was lost.
    private func runReconciliation() async {
        guard configuration.inboxReconciliation else { return }
        while !Task.isCancelled {
            do { try await clock.sleep(for: configuration.heartbeatInterval) } catch { return }
            await host.reconcile()
        }
    }

    // MARK: - State for the server and tests

    /// True once registered and renewing, and not shutting down (`/ready`).
    public var isReady: Bool { !host.isShuttingDown && keeper.isCurrent }

    /// Self-fence actions and writes the store rejected, since start.
    public var fenceCounts: (selfFences: Int, rejectedWrites: Int) { keeper.fenceCounts }

    /// Clock steps detected between the database and this replica (each fenced every handler).
    public var clockSteps: Int { keeper.clockSteps }

    /// The database node of the last renewal (nil on the in-memory store), the failovers of the
    /// database this replica checked and the ones that had gone back in time.
    public var database: (node: DatabaseNode?, failovers: Int, failedChecks: Int) { keeper.database }

    /// The handlers live in memory on this replica now, in no particular order.
    public var liveHandlerIDs: [HandlerID] { host.liveHandlers.map(\.id) }

    /// Hibernates a live handler now, as the idle sweep would, and returns once it has left memory.
    public func hibernateNow(_ id: HandlerID) async {
        guard let handler = host.handler(id) else { return }
        handler.stop(.hibernate)
        for await _ in handler.ended {}
    }

    /// The runtime of a handler live on this replica (for inspection; nil when not live here).
    public func runtime(of id: HandlerID) -> HandlerRuntime? { host.handler(id)?.runtime }

    /// Makes sure the handler runs somewhere; see `HandlerHost.reload(_:)`.
    /// - Returns: true when the handler is live on this replica afterwards.
    @discardableResult
    public func reload(_ id: HandlerID) async throws -> Bool { try await host.reload(id) != .notHere }

    // MARK: - One pass of a loop (tests drive these directly)

    func heartbeatOnce() async { await keeper.renewOnce(host: host) }
    func claimOnce() async { await claimer.claimOnce(host: host) }
    @discardableResult func sweepIdle() -> [HandlerID] { sweeper?.sweep(host: host) ?? [] }
    @discardableResult func selfFenceIfNeeded() -> Bool { keeper.selfFenceIfNeeded(host: host) }
    @discardableResult func reconcile() async -> Bool { await host.reconcile() }
}
