import Foundation
import LeaseholdEngine

/// Drives the reducer deterministically: step runs in FIFO order, timers fired in deadline order
/// on a fake clock, external events injected when the handler waits. No runtime, no I/O.
struct EngineDriver {
    let machine: HandlerMachine
    var state: HandlerState
    var pending: [StepRun] = []
    var log: [LogRecord] = []
    var now: Double = 1_000
    var external: [AnyEvent]
    var ticks = 0
    /// The child handlers the reducer asked for, in order (each request, repeats included).
    var childRequests: [ChildRequest] = []

    init(_ workflow: Workflow, state: HandlerState? = nil, external: [AnyEvent] = []) {
        self.machine = HandlerMachine(workflow: workflow)
        self.state = state ?? HandlerState(workflowName: workflow.name)
        self.external = external
    }

    mutating func apply(_ kind: Tick.Kind) {
        let (next, commands) = machine.reduce(state, Tick(now: now, kind))
        state = next
        ticks += 1
        for command in commands {
            switch command {
            case .runStep(let run): pending.append(run)
            case .log(let record): log.append(record)
            case .startChild(let request): childRequests.append(request)
            case .armTimer, .cancelTimer, .finished: break
            }
        }
    }

    /// Advances by one tick. Returns false when nothing is left to do.
    mutating func advance() async -> Bool {
        if state.status.isFinished { return false }
        if !pending.isEmpty {
            let run = pending.removeFirst()
            apply(await Self.execute(run, workflow: machine.workflow, context: state.context))
            return true
        }
        if let timer = state.timers.min(by: { $0.deadline < $1.deadline }) {
            now = max(now, timer.deadline)
            apply(.timerFired(timerID: timer.id))
            return true
        }
        if !external.isEmpty {
            apply(.external(external.removeFirst()))
            return true
        }
        return false
    }

    mutating func runToEnd(limit: Int = 100_000) async {
        var count = 0
        while count < limit, await advance() { count += 1 }
    }

    static func execute(_ run: StepRun, workflow: Workflow, context: [String: JSONValue]) async -> Tick.Kind {
        guard let step = workflow.step(named: run.step) else {
            return .stepFailed(runID: run.id, error: .engine("no step"))
        }
        let stepContext = StepContext(run: run, state: context)
        do {
            try await step.body(run.event, stepContext)
            return .stepFinished(runID: run.id, output: stepContext.collectedOutput)
        } catch let waiting as WaitingForEvent {
            var output = StepOutput()
            output.wait = waiting.request
            return .stepFinished(runID: run.id, output: output)
        } catch {
            return .stepFailed(runID: run.id, error: StepError(error))
        }
    }

    /// The state as a snapshot would carry it: encoded to JSON and decoded again.
    func snapshot() throws -> HandlerState {
        try JSONDecoder().decode(HandlerState.self, from: JSONEncoder().encode(state))
    }

    var streamTypes: [String] { log.filter { !$0.isInternal }.map(\.type) }
}
