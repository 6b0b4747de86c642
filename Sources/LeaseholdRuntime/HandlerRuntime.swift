import Foundation
import LeaseholdEngine
import LeaseholdKit
import Synchronization

/// Runs one handler in this process: feeds ticks to the reducer, runs steps as child tasks of one
/// task tree, arms timers, and checkpoints through its `HandlerPersistence`.
///
/// `run()` owns every task of the handler; when it returns (finished, stopped, or failed with the
/// persistence's error) no step, timer or checkpoint task of it is left. Checkpoints are pipelined:
/// steps keep running while the previous checkpoint commits, and each checkpoint carries
/// everything logged since the last one.
///
/// A change that no client sees — internal step-state records only, and inbox events consumed —
/// made while a step runs or is about to, waits for the next change, at most
/// `checkpointCoalescing`. It is written at once when it carries a record a client sees (a
/// streamed event, a prompt, the terminal event), when the handler finished, or when no step runs
/// or waits to run. So a short run or a reload writes one checkpoint instead of two; a step's
/// start or end, while other steps run or the next one starts, shows at most that much later.
/// Nothing is acknowledged on such a change, so delaying its write loses nothing: until it is
/// written the consumed event stays in the inbox and would be delivered again after a failover,
/// with the snapshot from before it was applied, exactly as if the handler had failed before
/// checkpointing it.
public final class HandlerRuntime: Sendable {
    private enum Input: Sendable {
        case tick(Tick.Kind)
        case deliver([Delivery])
        case stop(StopMode)
    }

    struct Shared {
        var state: HandlerState
        var pendingLog: [LogRecord] = []
        var pendingConsumed: [String] = []
        var dirty = false
        /// A checkpoint taken from the pending change is being written (its outcome not known yet).
        var writing = false
        var abandoned = false
        var delivered: Set<String> = []
        var lastActivity: Duration
        var quiescent = false
        var liveTasks = 0
        /// The pending change is one a client can see: write it without coalescing.
        var urgent = false
        /// How many more step runs go through `isolation` (a suspect handler); see `init`.
        var isolatedRunsLeft = 0
    }

    /// The handler this runtime runs.
    public let handlerID: String
    private let machine: HandlerMachine
    let persistence: any HandlerPersistence
    private let maxConcurrentSteps: Int
    let clock: ReplicaClock
    private let fencingToken: Int64
    let checkpointCoalescing: Duration
    let shared: Mutex<Shared>
    /// The checkpoint loop, holding a change that may wait, waits here for one that may not.
    let urgentChange = WaiterRegistry<CheckpointWait>()
    private let inputs: AsyncStream<Input>
    private let inputContinuation: AsyncStream<Input>.Continuation
    let checkpointSignals: AsyncStream<Void>
    let checkpointContinuation: AsyncStream<Void>.Continuation
    private let isolation: (any StepIsolation)?

    /// - Parameters:
    ///   - state: a fresh state (its start event comes as a delivery) or one restored from a snapshot.
    ///   - maxConcurrentSteps: how many step runs may execute at once; more wait in order.
    ///   - clock: monotonic time (idleness, timer sleeps) and wall time (durable timer deadlines).
    ///   - fencingToken: the token of the lease this runtime runs under, handed to every step.
    ///   - checkpointCoalescing: how long a change no client sees may wait for the next one while
    ///     steps run (zero: every change is written at once).
    ///   - isolation: where steps run while the handler is a suspect (a replica died of a fault
    ///     during one of its steps); nil runs them here.
    ///   - suspect: a replica died of a fault while a step of this handler ran there. As many
    ///     runs as it has in flight in `state`, plus `pendingInbox` (the events its replica had not
    ///     checkpointed yet, each of which may start one), plus `isolationMargin`, go through
    ///     `isolation`: the one that trapped is among them. After that its steps run here again.
    ///   - pendingInbox: see `suspect`.
    public init(
        handlerID: String,
        workflow: Workflow,
        state: HandlerState,
        persistence: any HandlerPersistence,
        maxConcurrentSteps: Int = 16,
        clock: ReplicaClock = .system,
        fencingToken: Int64 = 0,
        checkpointCoalescing: Duration = .zero,
        isolation: (any StepIsolation)? = nil,
        suspect: Bool = false,
        pendingInbox: Int = 0
    ) {
        self.isolation = isolation
        self.handlerID = handlerID
        self.fencingToken = fencingToken
        self.checkpointCoalescing = checkpointCoalescing
        self.machine = HandlerMachine(workflow: workflow)
        self.persistence = persistence
        self.maxConcurrentSteps = max(1, maxConcurrentSteps)
        self.clock = clock
        var shared = Shared(state: state, lastActivity: clock.now)
        shared.isolatedRunsLeft =
            suspect && isolation != nil ? state.inFlight.count + pendingInbox + Self.isolationMargin : 0
        self.shared = Mutex(shared)
        (inputs, inputContinuation) = AsyncStream.makeStream(of: Input.self)
        (checkpointSignals, checkpointContinuation) = AsyncStream.makeStream(
            of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    // MARK: - Control (any task)

    /// Hands external events (and the start event) to the handler. An inbox id already delivered
    /// to this runtime is skipped, so repeated wake-ups cannot apply an event twice.
    public func deliver(_ deliveries: [Delivery]) {
        let fresh = shared.withLock { shared -> [Delivery] in
            let fresh = deliveries.filter { shared.delivered.insert($0.inboxID).inserted }
            if !fresh.isEmpty { shared.quiescent = false }
            return fresh
        }
        if !fresh.isEmpty { inputContinuation.yield(.deliver(fresh)) }
    }

    /// Asks `run()` to end. Returns at once; `run()` returns when everything has stopped.
    public func stop(_ mode: StopMode) {
        if case .abandon = mode { shared.withLock { $0.abandoned = true } }
        inputContinuation.yield(.stop(mode))
    }

    /// The latest state (what the next checkpoint writes).
    public var state: HandlerState { shared.withLock { $0.state } }

    /// When the handler last did anything, if it now only waits (no step running, nothing to apply,
    /// nothing to write or being written: what it did is durable). Monotonic time of the replica's
    /// clock (`ReplicaClock.now`).
    public var idleSince: Duration? {
        shared.withLock { $0.quiescent && !$0.dirty && !$0.writing ? $0.lastActivity : nil }
    }

    /// Tasks of this handler alive right now (steps, timers, checkpointer). Zero once `run()` returned.
    public var liveTasks: Int { shared.withLock { $0.liveTasks } }

    /// Whether its steps run in isolation now (it is a suspect that has not got past its steps yet).
    public var isolating: Bool { shared.withLock { $0.isolatedRunsLeft > 0 } }

    /// Runs isolated beyond those in flight and those its pending events start when a suspect is
    /// restored: what they chain into between its last checkpoint and the trap (a checkpoint
    /// waits at most `checkpointCoalescing`, so that is a few runs).
    public static let isolationMargin = 8

    // MARK: - Running

    /// Runs the handler until it finishes or is stopped.
    /// - Throws: the persistence's error (e.g. lease lost); every task of the handler has ended by then.
    public func run() async throws -> RuntimeOutcome {
        try await withThrowingTaskGroup(of: RuntimeOutcome?.self) { group in
            group.addTask {
                try await self.tracked { try await self.checkpointLoop() }
                return nil
            }
            group.addTask { await self.mainLoop() }
            var outcome: RuntimeOutcome?
            do {
                while let next = try await group.next() {
                    guard let next else { continue }
                    outcome = next
                    // Abandoned (the lease is gone): a checkpoint still in flight can only be
                    // rejected, and may be stuck on a dead connection; cancel it rather than wait.
                    if shared.withLock({ $0.abandoned }) { group.cancelAll() }
                }
            } catch  where shared.withLock({ $0.abandoned }) {
                return .stopped(self.state)  // the cancelled write's error: nothing was meant to be written
            }
            return outcome ?? .stopped(self.state)
        }
    }

    private func tracked<T>(_ body: () async throws -> T) async rethrows -> T {
        shared.withLock { $0.liveTasks += 1 }
        defer { shared.withLock { $0.liveTasks -= 1 } }
        return try await body()
    }

    /// What the main loop holds between two inputs.
    private struct LoopState {
        var handler: HandlerState
        var scheduler: StepScheduler
        /// Deliveries that overtook the start event, kept unconsumed until it comes.
        var beforeStart: [Delivery] = []
    }

    /// The handler's one loop: every input (a step's end, a timer, a delivery, a stop) goes
    /// through the reducer (`apply`), whose commands start step runs, timers and child workflows
    /// as tasks of one group, cancelled when the handler finishes or stops.
    private func mainLoop() async -> RuntimeOutcome {
        let scheduler = StepScheduler(limit: maxConcurrentSteps) { [machine] step in
            machine.workflow.step(named: step)?.maxConcurrency
        }
        var current = LoopState(handler: shared.withLock { $0.state }, scheduler: scheduler)
        var outcome: RuntimeOutcome?
        await withTaskGroup(of: Void.self) { tasks in
            // A quarantined handler restored here was released by an operator.
            if current.handler.started {
                apply(current.handler.quarantine != nil ? .release : .resume, consumed: [], &current, &tasks)
            }
            loop: for await input in inputs {
                switch input {
                case .tick(let kind):
                    switch kind {
                    case .stepFinished(let runID, _), .stepFailed(let runID, _): current.scheduler.ended(runID)
                    default: break
                    }
                    apply(kind, consumed: [], &current, &tasks)
                    launch(current.scheduler.startWaiting(), context: current.handler.context, in: &tasks)
                case .deliver(let deliveries):
                    deliver(deliveries, &current, &tasks)
                case .stop:
                    outcome = .stopped(current.handler)
                    break loop
                }
                if current.handler.status.isFinished {
                    outcome = .finished(current.handler)
                    break loop
                }
            }
            tasks.cancelAll()
        }
        // Nothing more will come to join what is pending: write it now.
        shared.withLock { $0.urgent = true }
        urgentChange.wake(.urgent)
        checkpointContinuation.finish()
        return outcome ?? .stopped(current.handler)
    }

    /// One tick through the reducer: the new state is published (and checkpointed), and its
    /// commands are carried out.
    private func apply(
        _ kind: Tick.Kind, consumed: [String], _ current: inout LoopState, _ tasks: inout TaskGroup<Void>
    ) {
        let (next, commands) = machine.reduce(current.handler, Tick(now: clock.wallSeconds, kind))
        current.handler = next
        let log = commands.compactMap { command -> LogRecord? in
            if case .log(let record) = command { return record }
            return nil
        }
        let starting = commands.count { command in
            if case .runStep = command { return true }
            return false
        }
        publish(next, log: log, consumed: consumed, running: current.scheduler.count + starting)
        for command in commands {
            switch command {
            case .runStep(let run): launch(current.scheduler.submit(run), context: next.context, in: &tasks)
            case .armTimer(let id, let deadline): armTimer(id, at: deadline, in: &tasks)
            case .startChild(let request): tasks.addTask { await self.tracked { await self.startChild(request) } }
            case .log, .cancelTimer, .finished: break
            }
        }
    }

    /// Inbox events into the reducer, in order; the start event first, whenever it comes.
    private func deliver(_ deliveries: [Delivery], _ current: inout LoopState, _ tasks: inout TaskGroup<Void>) {
        for delivery in deliveries {
            if delivery.event.type == EventType.startEventName && !current.handler.started {
                apply(.start(delivery.event), consumed: [delivery.inboxID], &current, &tasks)
                // Events that arrived before the start event, in their order.
                let early = current.beforeStart
                current.beforeStart = []
                for delivery in early {
                    apply(.external(delivery.event), consumed: [delivery.inboxID], &current, &tasks)
                }
            } else if !current.handler.started {
                // A direct delivery can overtake the start event (a send while the launch's inbox
                // read is in flight): keep it, unconsumed, until then.
                current.beforeStart.append(delivery)
            } else {
                apply(.external(delivery.event), consumed: [delivery.inboxID], &current, &tasks)
            }
        }
    }

    /// A durable timer as a task of the handler: fires `.timerFired` at `deadline` (wall-clock
    /// seconds), or never when the handler's tasks are cancelled first.
    private func armTimer(_ id: Int, at deadline: Double, in tasks: inout TaskGroup<Void>) {
        tasks.addTask {
            await self.tracked {
                // In slices of at most a day: a deadline restored from a snapshot written before
                // `Bounds.delay` clamped it may be far beyond what `Duration.seconds` holds
                // without trapping.
                while case let delay = deadline - self.clock.wallSeconds, delay > 0 {
                    let slice = min(delay, Self.longestSleep)
                    do { try await self.clock.sleep(for: .seconds(slice)) } catch { return }
                }
                self.inputContinuation.yield(.tick(.timerFired(timerID: id)))
            }
        }
    }

    private func launch(_ runs: [StepRun], context: [String: JSONValue], in tasks: inout TaskGroup<Void>) {
        for run in runs { launch(run, context: context, in: &tasks) }
    }

    private func launch(_ run: StepRun, context: [String: JSONValue], in tasks: inout TaskGroup<Void>) {
        guard let step = machine.workflow.step(named: run.step) else {
            inputContinuation.yield(.tick(.stepFailed(runID: run.id, error: .engine("unknown step '\(run.step)'"))))
            return
        }
        let isolated = shared.withLock { shared -> Bool in
            guard shared.isolatedRunsLeft > 0 else { return false }
            shared.isolatedRunsLeft -= 1
            return true
        }
        let isolation = isolated ? self.isolation : nil
        tasks.addTask {
            await self.tracked {
                let kind: Tick.Kind
                do {
                    let output = try await Self.withTimeout(step.timeout, clock: self.clock) {
                        try await self.perform(step, run, context: context, isolation: isolation)
                    }
                    if let problem = output.boundsProblem {
                        kind = .stepFailed(runID: run.id, error: .engine("step output cannot be kept: \(problem)"))
                    } else {
                        kind = .stepFinished(runID: run.id, output: output)
                    }
                } catch let waiting as WaitingForEvent {
                    var output = StepOutput()
                    output.wait = waiting.request
                    kind = .stepFinished(runID: run.id, output: output)
                } catch let crashed as StepCrashed {
                    if Task.isCancelled { return }  // the handler stopped and its process was ended
                    kind = .quarantine(runID: run.id, reason: crashed.description)
                } catch {
                    if Task.isCancelled { return }
                    kind = .stepFailed(runID: run.id, error: StepError(error))
                }
                self.inputContinuation.yield(.tick(kind))
            }
        }
    }

    /// Creates a child handler, trying again (`Backoff`, waited on) until it is created or this
    /// runtime stops: the parent's step waits for it, and a restore asks again anyway.
    private func startChild(_ request: ChildRequest) async {
        var backoff = Backoff(.waitedOn)
        while !Task.isCancelled {
            do {
                try await persistence.startChild(request)
                return
            } catch {
                do { try await clock.sleep(for: backoff.next()) } catch { return }
            }
        }
    }

    /// One step run: here, marked in the crash report for as long as it runs, or through `isolation`.
    private func perform(
        _ step: Step, _ run: StepRun, context: [String: JSONValue], isolation: (any StepIsolation)?
    ) async throws -> StepOutput {
        if let isolation {
            return try await isolation.run(
                IsolatedStep(
                    workflow: machine.workflow.name, run: run, context: context, fencingToken: fencingToken,
                    handlerID: handlerID))
        }
        let stepContext = StepContext(run: run, state: context, fencingToken: fencingToken, handlerID: handlerID)
        try await CrashReport.duringStep(of: handlerID) {
            try await step.body(run.event, stepContext)
        }
        return stepContext.collectedOutput
    }

    /// The longest single sleep on a timer's deadline (one day); see `armTimer`.
    static let longestSleep: Double = 86_400

    private static func withTimeout<T: Sendable>(
        _ seconds: Double?, clock: ReplicaClock, _ body: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        guard let seconds else { return try await body() }
        let limit = Bounds.delay(seconds)
        return try await withTimeLimit(.seconds(limit), clock: clock, timedOut: { StepTimedOut(seconds: limit) }, body)
    }
}
