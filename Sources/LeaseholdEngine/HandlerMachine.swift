/// An input to the handler's reducer. `now` is wall-clock seconds since 1970.
public struct Tick: Sendable, Hashable {
    /// What happened.
    public enum Kind: Sendable, Hashable {
        case start(AnyEvent)
        case external(AnyEvent)
        case stepFinished(runID: Int, output: StepOutput)
        case stepFailed(runID: Int, error: StepError)
        case timerFired(timerID: Int)
        case cancel
        case timeout
        /// The handler was restored from a snapshot: run in-flight steps again, re-arm timers.
        case resume
        /// A run of this handler ended the process it ran in, after a crash of a replica while
        /// the handler was in a step: set it aside (failed to clients, state kept for a release).
        case quarantine(runID: Int, reason: String)
        /// An operator released a quarantined handler: it runs again from where it stopped.
        case release
    }

    /// When it happened: wall-clock seconds since 1970.
    public var now: Double
    /// What happened.
    public var kind: Kind

    /// An input of `kind` at `now`.
    public init(now: Double, _ kind: Kind) {
        self.now = now
        self.kind = kind
    }
}

/// What the reducer asks the runtime to do.
public enum Command: Sendable, Hashable {
    case runStep(StepRun)
    case log(LogRecord)
    case armTimer(id: Int, deadline: Double)
    case cancelTimer(id: Int)
    /// Create this child handler (idempotent by its id: a child asked for again is not started twice).
    case startChild(ChildRequest)
    case finished
}

/// The handler as a pure reducer `(State, Tick) -> (State, [Command])`. No I/O, no clock.
public struct HandlerMachine: Sendable {
    /// The workflow whose steps and events the reducer routes by.
    public let workflow: Workflow

    /// The reducer of `workflow`.
    public init(workflow: Workflow) {
        self.workflow = workflow
    }

    /// Applies `tick` to `state`: the new state and the commands for the runtime, in order.
    public func reduce(_ state: HandlerState, _ tick: Tick) -> (HandlerState, [Command]) {
        var reduction = Reduction(workflow: workflow, state: state, now: tick.now)
        reduction.apply(tick.kind)
        return (reduction.state, reduction.commands)
    }
}

private struct Reduction {
    let workflow: Workflow
    var state: HandlerState
    let now: Double
    var commands: [Command] = []

    mutating func apply(_ kind: Tick.Kind) {
        if case .release = kind {
            release()
            return
        }
        if state.status.isFinished { return }
        switch kind {
        case .start(let event):
            guard !state.started else { return }
            state.started = true
            if let timeout = workflow.timeout {
                arm(DurableTimer.Action.workflowTimeout, after: timeout)
            }
            var value = event.value
            state.parent = ParentLink(startEvent: value)
            if case .object(var fields) = value, fields.removeValue(forKey: ParentLink.startField) != nil {
                value = .object(fields)
            }
            dispatch(AnyEvent(type: EventType.startEventName, value: value))
        case .external(let event) where event.type == EventType.childFinished.name:
            guard state.started else { return }
            childFinished(event)
        case .external(let event):
            guard state.started else { return }
            if let index = state.waiters.firstIndex(where: { $0.eventType == event.type && $0.child == nil }) {
                rerun(state.waiters.remove(at: index).run, received: event)
            } else if workflow.steps.contains(where: {
                $0.accepts.contains(event.type) || $0.fanIn?.eventType == event.type
            }) {
                dispatch(event)
            } else if workflow.externalEvents.contains(where: { $0.name == event.type }) {
                state.pendingExternal.append(event)
            }
        case .stepFinished(let runID, let output):
            guard let run = takeRun(runID) else { return }
            finishStep(run, output: output)
        case .stepFailed(let runID, let error):
            guard let run = takeRun(runID) else { return }
            log(stepState(run, running: false, output: nil))
            stepFailed(run, error: error)
        case .timerFired(let timerID):
            guard let index = state.timers.firstIndex(where: { $0.id == timerID }) else { return }
            let timer = state.timers.remove(at: index)
            switch timer.action {
            case .deliver(let event): dispatch(event)
            case .retry(let run): start(retry: run)
            case .workflowTimeout: timeOut()
            }
        case .cancel:
            finish(.cancelled, terminal: AnyEvent(type: EventType.cancelled.name, value: [:]))
        case .timeout:
            timeOut()
        case .resume:
            guard state.started else { return }
            resume()
        case .quarantine(let runID, let reason):
            guard let run = state.inFlight.first(where: { $0.id == runID }) else { return }
            let why = "quarantined: step '\(run.step)' \(reason)"
            let terminal = AnyEvent(type: EventType.failed.name, value: ["error": .string(why)])
            state.quarantine = why
            state.status = .failed
            state.terminal = terminal
            state.error = why
            log(terminal)
            for timer in state.timers { commands.append(.cancelTimer(id: timer.id)) }
            commands.append(.finished)
        case .release:
            break  // handled above: it applies to a finished (quarantined) handler
        }
    }

    /// A failed try: retried while its policy allows; then handed to its `catch_error` step
    /// while that step's recovery budget for this chain of events lasts; else the workflow fails.
    mutating func stepFailed(_ run: StepRun, error: StepError) {
        let policy = workflow.step(named: run.step)?.retry ?? .none
        if run.attempt < policy.maxAttempts {
            var next = run
            next.attempt += 1
            next.lastError = error
            next.lastFailedAt = now
            arm(.retry(next), after: policy.delay(after: run.attempt))
            return
        }
        let elapsed = max(0, now - (run.firstAttemptAt ?? run.startedAt ?? now))
        if let catcher = workflow.catcher(of: run.step), let scope = catcher.catches {
            var recoveries = run.recoveries ?? [:]
            let count = recoveries[catcher.name, default: 0] + 1
            if count <= scope.maxRecoveries {
                recoveries[catcher.name] = count
                let failed = AnyEvent(
                    type: EventType.stepFailed.name,
                    value: [
                        "step_name": .string(run.step),
                        "input_event": ["type": .string(run.event.type), "value": run.event.value],
                        "exception": error.json, "attempts": .int(run.attempt),
                        "elapsed_seconds": .double(elapsed),
                        "failed_at": .string(iso8601(now)),
                    ])
                start(step: catcher.name, event: failed, attempt: 1, received: nil, recoveries: recoveries)
                return
            }
        }
        let tries = run.attempt == 1 ? "" : " after \(run.attempt) attempts"
        finish(
            .failed,
            terminal: AnyEvent(
                type: EventType.failed.name,
                value: [
                    "error": .string("step '\(run.step)' failed\(tries): \(error)"), "step_name": .string(run.step),
                    "exception": error.json, "attempts": .int(run.attempt), "elapsed_seconds": .double(elapsed),
                ]))
    }

    /// A child ended: the run waiting for it runs again with its end; an end nobody waits for
    /// yet (the wait was lost with a checkpoint a failover undid, and its run is asking again) is
    /// kept for the wait.
    mutating func childFinished(_ event: AnyEvent) {
        let childID = event.value["child_id"]?.stringValue
        guard let index = state.waiters.firstIndex(where: { $0.child?.id == childID }) else {
            if !state.pendingExternal.contains(event) { state.pendingExternal.append(event) }
            return
        }
        rerun(state.waiters.remove(at: index).run, childID: childID, end: event)
    }

    /// A waiting run again, as the same chain (origin), with what it waited for.
    mutating func rerun(_ run: StepRun, received: AnyEvent? = nil, childID: String? = nil, end: AnyEvent? = nil) {
        var children = run.children ?? [:]
        if let childID, let end { children[childID] = end }
        start(
            step: run.step, event: run.event, attempt: 1, received: received ?? run.received,
            recoveries: run.recoveries, origin: run.origin ?? run.id, children: children.isEmpty ? nil : children)
    }

    mutating func resume() {
        for waiter in state.waiters { if let child = waiter.child { commands.append(.startChild(child)) } }
        for run in state.inFlight { commands.append(.runStep(run)) }
        for timer in state.timers { commands.append(.armTimer(id: timer.id, deadline: timer.deadline)) }
    }

    /// Only a quarantined handler is released; its runs and timers start as after a restore.
    mutating func release() {
        guard state.quarantine != nil, state.status == .failed else { return }
        state.quarantine = nil
        state.status = .running
        state.terminal = nil
        state.error = nil
        resume()
    }

    mutating func timeOut() {
        let seconds = workflow.timeout.map { " after \($0)s" } ?? ""
        finish(
            .failed,
            terminal: AnyEvent(
                type: EventType.failed.name, value: ["error": .string("workflow timed out\(seconds)")]))
    }

    mutating func takeRun(_ id: Int) -> StepRun? {
        guard let index = state.inFlight.firstIndex(where: { $0.id == id }) else { return nil }
        return state.inFlight.remove(at: index)
    }

    mutating func finishStep(_ run: StepRun, output: StepOutput) {
        if let wait = output.wait {
            log(stepState(run, running: false, output: nil))
            let alreadyWaiting = state.waiters.contains { $0.run.step == run.step && $0.run.event == run.event }
            if alreadyWaiting { return }
            if let child = wait.child {
                waitForChild(run, child)
                return
            }
            if let prompt = wait.prompt { log(prompt) }
            if let index = state.pendingExternal.firstIndex(where: { $0.type == wait.eventType }) {
                // The answer came before the question: run again with it at once.
                rerun(run, received: state.pendingExternal.remove(at: index))
            } else {
                state.waiters.append(Waiter(run: run, eventType: wait.eventType))
            }
            return
        }
        log(stepState(run, running: false, output: output.sent.first?.type))
        for (key, value) in output.stateChanges.sorted(by: { $0.key < $1.key }) {
            state.context[key] = value
        }
        for event in output.streamed { log(event) }
        for timer in output.timers { arm(.deliver(timer.event), after: timer.seconds) }
        for event in output.sent {
            if state.status.isFinished { break }
            dispatch(event, recoveries: run.recoveries)
        }
    }

    /// Starts the steps `event` triggers; `recoveries` is the lineage's recovery count, carried
    /// by every run the event starts.
    /// A run asked for a child: start it (again: idempotent), unless its end is already here.
    mutating func waitForChild(_ run: StepRun, _ child: ChildRequest) {
        if let index = state.pendingExternal.firstIndex(where: {
            $0.type == EventType.childFinished.name && $0.value["child_id"]?.stringValue == child.id
        }) {
            rerun(run, childID: child.id, end: state.pendingExternal.remove(at: index))
            return
        }
        var waiter = Waiter(run: run, eventType: EventType.childFinished.name)
        waiter.child = child
        state.waiters.append(waiter)
        commands.append(.startChild(child))
    }

    mutating func dispatch(_ event: AnyEvent, recoveries: [String: Int]? = nil) {
        if workflow.isStop(event.type) {
            if event.type == EventType.failed.name {
                finish(.failed, terminal: event)
            } else if event.type == EventType.cancelled.name {
                finish(.cancelled, terminal: event)
            } else {
                finish(.completed, terminal: event)
            }
            return
        }
        for step in workflow.steps {
            if let fanIn = step.fanIn, fanIn.eventType == event.type {
                var buffer = state.collected[step.name] ?? []
                buffer.append(event.value)
                let needed: Int
                switch fanIn.count {
                case .fixed(let count): needed = count
                case .stateKey(let key): needed = state.context[key]?.intValue ?? Int.max
                }
                if buffer.count >= needed {
                    state.collected[step.name] = nil
                    let collected = AnyEvent(type: FanIn.collectedEventName, value: ["events": .array(buffer)])
                    start(step: step.name, event: collected, attempt: 1, received: nil, recoveries: recoveries)
                } else {
                    state.collected[step.name] = buffer
                }
            } else if step.accepts.contains(event.type) {
                start(step: step.name, event: event, attempt: 1, received: nil, recoveries: recoveries)
            }
        }
    }

    mutating func start(
        step: String, event: AnyEvent, attempt: Int, received: AnyEvent?, recoveries: [String: Int]? = nil,
        origin: Int? = nil, children: [String: AnyEvent]? = nil
    ) {
        var run = StepRun(id: state.nextRunID, step: step, event: event, attempt: attempt, received: received)
        run.startedAt = now
        run.firstAttemptAt = now
        run.recoveries = recoveries
        run.origin = origin
        run.children = children
        launch(run)
    }

    /// A retry: the same run's record (first try, last error, lineage) under a new run id.
    mutating func start(retry: StepRun) {
        var run = retry
        run.id = state.nextRunID
        run.startedAt = now
        run.origin = nil  // a retry asks for new children
        run.children = nil
        if run.firstAttemptAt == nil { run.firstAttemptAt = now }
        launch(run)
    }

    private mutating func launch(_ run: StepRun) {
        state.nextRunID += 1
        state.inFlight.append(run)
        log(stepState(run, running: true, output: nil))
        commands.append(.runStep(run))
    }

    /// Every durable delay enters here, clamped (`Bounds.delay`): NaN, infinite or absurd
    /// seconds from a step, a retry policy or a workflow's timeout must not become a deadline
    /// that traps where it is slept on.
    mutating func arm(_ action: DurableTimer.Action, after seconds: Double) {
        let deadline = now + Bounds.delay(seconds)
        let timer = DurableTimer(id: state.nextTimerID, deadline: deadline, action: action)
        state.nextTimerID += 1
        state.timers.append(timer)
        commands.append(.armTimer(id: timer.id, deadline: deadline))
    }

    mutating func finish(_ status: HandlerStatus, terminal: AnyEvent) {
        for timer in state.timers { commands.append(.cancelTimer(id: timer.id)) }
        state.timers = []
        state.inFlight = []
        state.waiters = []
        state.pendingExternal = []
        state.collected = [:]
        state.status = status
        state.terminal = terminal
        if status == .failed { state.error = terminal.value["error"]?.stringValue }
        log(terminal)
        commands.append(.finished)
    }

    func stepState(_ run: StepRun, running: Bool, output: String?) -> AnyEvent {
        AnyEvent(
            type: EventType.stepStateChanged.name,
            value: [
                "name": .string(run.step),
                "step_state": running ? "running" : "not_running",
                "worker_id": "0",
                "input_event_name": .string(run.event.type),
                "output_event_name": output.map(JSONValue.string) ?? .null,
            ])
    }

    mutating func log(_ event: AnyEvent) {
        let (types, qualifiedName) = workflow.describe(event.type)
        let record = LogRecord(
            sequence: state.nextSequence, type: event.type, value: event.value, types: types,
            qualifiedName: qualifiedName, isInternal: event.type == EventType.stepStateChanged.name,
            isTerminal: workflow.isStop(event.type))
        state.nextSequence += 1
        commands.append(.log(record))
    }
}
