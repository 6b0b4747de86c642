import Foundation
import LeaseholdCoordinator
import LeaseholdEngine
import LeaseholdKit
import LeaseholdSamples
import LeaseholdStore
import Logging
import Synchronization

/// What one simulated run is made of.
public struct SimulationOptions: Sendable {
    /// Decides every draw: faults, workload, latencies, the executor's order, ids.
    public var seed: UInt64
    /// Replica processes (each a production `Coordinator`).
    public var replicas = 3
    /// Handlers the workload starts.
    public var handlers = 30
    /// Faults drawn over the window.
    public var faults = 5
    /// How long the workload and the faults last (simulated).
    public var window: Duration = .seconds(180)
    /// After the faults heal, every acknowledged handler must finish within this.
    public var livenessBound: Duration = .seconds(60)
    /// The replicas' lease TTL.
    public var leaseTTL: Duration = .seconds(2)
    /// Turns a safety mechanism off (the mutation table: the simulator must then report a violation).
    public var disabled: SafetyMechanism?

    /// The workload floor of the simulator (3 replicas, 30 handlers, 5 faults, 3 minutes) for `seed`.
    public init(seed: UInt64) { self.seed = seed }
}

/// The safety mechanisms the simulator must catch missing (README's mutation table).
public enum SafetyMechanism: String, Sendable, CaseIterable {
    /// The replica's own fencing: self-fencing before its leases may expire.
    case selfFencing = "self-fencing"
    /// The database's fencing predicate: a write only under the handler's current token, by its
    /// owner, within the lease.
    case fencingPredicate = "fencing-predicate"
    /// A write stuck over half a TTL takes its lease out of renewal (and the handler is stopped).
    case stuckWriteFence = "stuck-write-fence"
    /// A replica checks a database node that changed against what it was acknowledged, and
    /// starts over (tokens moved past every one it saw) when writes were lost.
    case failoverCheck = "failover-check"
    /// A creation under a reserved token the database's sequence is not past is refused (the
    /// database went back in time since the block was reserved).
    case tokenReserveCheck = "token-reserve-check"
    /// Live handlers' inboxes are reconciled every renewal period (a lost notification delays an
    /// event by at most that).
    case inboxReconciliation = "inbox-reconciliation"
}

/// What a run found.
public struct SimulationResult: Sendable {
    /// The seed run.
    public var seed: UInt64
    /// FNV-1a of the history (writes, answers, effects, registrations, faults, each with its
    /// simulated instant): a replay of the seed gives the same.
    public var traceHash: UInt64
    /// What the checker found; empty when every property held.
    public var violations: [String]
    /// Simulated time at the end.
    public var simulatedTime: Duration
    /// Jobs the executor ran (tasks resumed).
    public var jobsRun: Int
    /// Writes the database applied.
    public var writes: Int
    /// Answers clients were given.
    public var answers: Int
    /// The seed's faults.
    public var plan: FaultPlan
    /// Handlers that ended (completed, failed or cancelled).
    public var handlersFinished: Int
    /// Tokens granted again shortly after a failover that lost writes (the database forgot them;
    /// outside the safety envelope, which needs a synchronous standby).
    public var tokensReissued = 0
}

/// Runs one seed: the production coordinators of `options.replicas` replicas over one in-memory
/// store behind a fault layer, a workload of the samples, the faults of the seed, then the
/// checker over the history. Every task runs on one `SimulatedExecutor`; time is simulated.
public enum Simulation {
    /// Runs one seed on the calling thread, which it blocks until the end (the thread runs every
    /// job). From async code use `runOnOwnThread`.
    public static func run(_ options: SimulationOptions) -> SimulationResult {
        let executor = SimulatedExecutor(seed: options.seed)
        let clock = SimulatedClock()
        let outcome = Mutex<SimulationResult?>(nil)
        let root = Task(executorPreference: executor) {
            let result = await Cluster(options, clock: clock).run()
            outcome.withLock { $0 = result }
        }
        while true {
            executor.runUntilIdle()
            if var result = outcome.withLock({ $0 }) {
                result.jobsRun = executor.jobsRun
                return result
            }
            guard let next = clock.nextDeadline else {
                // Nothing can run and nothing sleeps: the cluster is stuck for good.
                root.cancel()
                executor.runUntilIdle()
                return SimulationResult(
                    seed: options.seed, traceHash: 0, violations: ["deadlock: no task can run and none sleeps"],
                    simulatedTime: clock.now.offset, jobsRun: executor.jobsRun, writes: 0, answers: 0,
                    plan: FaultPlan(faults: [], healedAt: .zero), handlersFinished: 0, tokensReissued: 0)
            }
            clock.advance(to: next)
        }
    }
}

extension Simulation {
    /// `run` on a thread of its own, so that a caller on the cooperative pool does not block one of
    /// its few threads for the whole run.
    public static func runOnOwnThread(_ options: SimulationOptions) async -> SimulationResult {
        await withCheckedContinuation { continuation in
            let thread = Thread { continuation.resume(returning: run(options)) }
            thread.stackSize = 16 << 20
            thread.start()
        }
    }
}

/// The simulated cluster of one run.
final class Cluster: Sendable {
    static let epoch = Date(timeIntervalSince1970: 1_800_000_000)

    let options: SimulationOptions
    let clock: SimulatedClock
    let store: InMemoryStore
    let chaos: Chaos
    let history: History
    let registry: WorkflowRegistry
    let plan: FaultPlan
    private let coordinators = Mutex<[Int: Coordinator]>([:])
    private let links = Mutex<[Int: SimulatedLink]>([:])
    private let wallOffsets = Mutex<[Int: Duration]>([:])
    /// The database's WAL timeline: raised by each failover.
    private let timeline = Mutex(1)
    let random: Mutex<SeededRandom>

    init(_ options: SimulationOptions, clock: SimulatedClock) {
        self.options = options
        self.clock = clock
        store = InMemoryStore(
            clock: ReplicaClock(clock, wall: { Cluster.epoch + clock.now.offset.seconds }),
            fencing: options.disabled != .fencingPredicate,
            tokenReserveCheck: options.disabled != .tokenReserveCheck)
        chaos = Chaos(seed: options.seed)
        history = History()
        let history = history
        registry = try! Samples.registry(ledger: EffectLedger(clock: clock, history: history, chaos: chaos))
        var random = SeededRandom(seed: options.seed)
        plan = FaultPlan.draw(
            count: options.faults, replicas: options.replicas, window: options.window, using: &random)
        self.random = Mutex(random)
    }

    func run() async -> SimulationResult {
        for fault in plan.faults { history.note(fault.at, "planned \(fault.kind) r\(fault.replica + 1) \(fault.for)") }
        await withTaskGroup(of: Void.self) { group in
            for slot in 0..<options.replicas {
                group.addTask { await self.supervise(slot) }
            }
            for fault in plan.faults where fault.kind != .crash {
                group.addTask { await self.inject(fault) }
            }
            await Workload(cluster: self).run()
            await waitForLiveness()
            group.cancelAll()
        }
        var checker = Checker(
            store: store, history: history, epoch: Cluster.epoch, reissueBound: options.leaseTTL * 2 + .seconds(1))
        let violations = await checker.check()
        let finished = (try? await store.handlers(HandlerFilter()).filter { $0.status != .running }.count) ?? 0
        return SimulationResult(
            seed: options.seed, traceHash: history.hash, violations: violations, simulatedTime: clock.now.offset,
            jobsRun: 0, writes: history.writes.count, answers: history.answers.count, plan: plan,
            handlersFinished: finished, tokensReissued: checker.reissued)
    }

    // MARK: - Replicas

    func replicaID(_ slot: Int) -> ReplicaID { ReplicaID("r\(slot + 1)") }

    private func makeCoordinator(_ slot: Int) -> (Coordinator, SimulatedLink) {
        let link = SimulatedLink(
            base: store, replica: replicaID(slot), clock: clock, chaos: chaos, history: history,
            node: { [self] in
                DatabaseNode(
                    systemIdentifier: "simulated", timeline: self.timeline.withLock { $0 }, address: "sim-db",
                    synchronousStandbys: 0)
            })
        let wall = ReplicaClock(
            clock,
            wall: { [clock, self] in
                Cluster.epoch + (clock.now.offset + (self.wallOffsets.withLock { $0[slot] } ?? .zero)).seconds
            })
        let ids = random.withLock { SeededRandom(seed: $0.next()) }
        let idState = Mutex(ids)
        var configuration = CoordinatorConfiguration(
            replicaID: replicaID(slot), address: "sim-\(slot + 1)", leaseTTL: options.leaseTTL,
            idleTimeout: .seconds(3))
        if options.disabled == .selfFencing { configuration.selfFencing = false }
        if options.disabled == .stuckWriteFence { configuration.stuckWriteFence = false }
        if options.disabled == .inboxReconciliation { configuration.inboxReconciliation = false }
        if options.disabled == .failoverCheck { configuration.failoverCheck = false }
        let coordinator = Coordinator(
            store: link, registry: registry, configuration: configuration, logger: Self.logger, clock: wall,
            ids: IDSource { idState.withLock { $0.next() } })
        return (coordinator, link)
    }

    static let logger = Logger(label: "sim") { _ in SwiftLogNoOpLogHandler() }

    /// Runs the replica in `slot` through its crashes and restarts until cancelled.
    private func supervise(_ slot: Int) async {
        var crashes = plan.faults.filter { $0.kind == .crash && $0.replica == slot }
        while !Task.isCancelled {
            let (coordinator, link) = makeCoordinator(slot)
            coordinators.withLock { $0[slot] = coordinator }
            links.withLock { $0[slot] = link }
            let started = clock.now.offset
            crashes.removeAll { $0.at < started }
            let crash = crashes.first
            await withTaskGroup(of: Void.self) { incarnation in
                incarnation.addTask { try? await coordinator.run() }
                incarnation.addTask {
                    guard let crash else { return await Self.sleepForever(self.clock) }
                    try? await self.clock.sleep(until: .init(offset: crash.at))
                    guard !Task.isCancelled else { return }
                    // Dead: nothing it sends lands any more, then every task of it stops.
                    link.set(.dead)
                    self.history.note(self.clock.now.offset, "crash r\(slot + 1)")
                }
                await incarnation.next()
                incarnation.cancelAll()
            }
            link.set(.dead)
            coordinators.withLock { $0[slot] = nil }
            guard !Task.isCancelled else { return }
            let downFor = crash.map(\.for) ?? .seconds(1)
            if let crash { crashes.removeAll { $0 == crash } }
            try? await clock.sleep(for: downFor)
            history.note(clock.now.offset, "restart r\(slot + 1)")
        }
    }

    static func sleepForever(_ clock: SimulatedClock) async {
        while !Task.isCancelled { try? await clock.sleep(for: .seconds(3600)) }
    }

    /// A replica to send a request to (a live one, drawn from the seed), with its slot.
    func anyReplica() -> (Int, Coordinator)? {
        let live = coordinators.withLock { $0.sorted { $0.key < $1.key } }
        guard !live.isEmpty else { return nil }
        let pick = random.withLock { Int($0.next() % UInt64(live.count)) }
        return (live[pick].key, live[pick].value)
    }

    // MARK: - Faults

    private func inject(_ fault: FaultPlan.Fault) async {
        if fault.kind == .failoverLosingWrites { return await failOver(fault) }
        do {
            try await clock.sleep(until: .init(offset: fault.at))
        } catch { return }
        let slot = fault.replica
        history.note(clock.now.offset, "\(fault.kind) r\(slot + 1) for \(fault.for)")
        let link = links.withLock { $0[slot] }
        switch fault.kind {
        case .crash: return
        case .pause: link?.hold(until: fault.at + fault.for)
        case .stuckWrites: link?.stickWrites(until: fault.at + fault.for)
        case .wallClockStep: wallOffsets.withLock { $0[slot, default: .zero] += fault.for }
        case .notificationsLost: link?.deafen(until: fault.at + fault.for)
        case .failoverLosingWrites: return  // see below

        case .partition:
            link?.set(.cut)
            try? await clock.sleep(for: fault.for)
            link?.set(.up)
        case .databaseRestart:
            let all = links.withLock { Array($0.values) }
            for link in all { link.set(.cut) }
            try? await clock.sleep(for: fault.for)
            for link in all { link.set(.up) }
        }
    }

    /// The standby's copy is taken `fault.for` before the failover, and the database goes back to
    /// it: every session drops for half a second, the timeline moves.
    private func failOver(_ fault: FaultPlan.Fault) async {
        do { try await clock.sleep(until: .init(offset: fault.at - fault.for)) } catch { return }
        let standby = await store.image()
        do { try await clock.sleep(until: .init(offset: fault.at)) } catch { return }
        let all = links.withLock { Array($0.values) }
        for link in all { link.set(.cut) }
        await store.restore(standby)
        timeline.withLock { $0 += 1 }
        history.rolledBack(from: fault.at - fault.for, to: fault.at)
        history.note(clock.now.offset, "failover losing \(fault.for) of writes")
        try? await clock.sleep(for: .milliseconds(500))
        for link in all { link.set(.up) }
    }

    // MARK: - Liveness

    /// After the faults healed, waits (simulated) until every handler finished or the bound passed.
    private func waitForLiveness() async {
        do { try await clock.sleep(until: .init(offset: plan.healedAt)) } catch { return }
        chaos.healed()
        let deadline = plan.healedAt + options.livenessBound
        while clock.now.offset < deadline {
            let running = (try? await store.handlers(HandlerFilter(statuses: [.running])).count) ?? 1
            if running == 0 { return }
            try? await clock.sleep(for: .seconds(1))
        }
    }
}
