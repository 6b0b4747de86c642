import Foundation
import LeaseholdEngine
import LeaseholdRuntime
import LeaseholdSamples
import Synchronization
import Testing

/// Runs isolated steps in this process through the child's own code (`IsolatedStep.perform`),
/// counting them; or ends each one as a trapped process would.
final class CountingIsolation: StepIsolation {
    let registry: WorkflowRegistry
    let crash: Bool
    let steps = Mutex<[String]>([])

    init(_ registry: WorkflowRegistry, crash: Bool = false) {
        self.registry = registry
        self.crash = crash
    }

    func run(_ step: IsolatedStep) async throws -> StepOutput {
        steps.withLock { $0.append(step.run.step) }
        if crash { throw StepCrashed(signal: SIGILL) }
        switch await step.perform(in: registry) {
        case .finished(let output): return output
        case .waiting(let request): throw WaitingForEvent(request: request)
        case .failed(let error): throw error
        }
    }
}

@Suite("Step isolation")
struct StepIsolationTests {
    let registry = try! Samples.registry()

    @Test("a suspect runs its pending events' runs and the margin isolated, then here; each tick once")
    func counterIsolatedForItsMargin() async throws {
        let isolation = CountingIsolation(registry)
        let persistence = RecordingPersistence()
        let runtime = HandlerRuntime(
            handlerID: "c", workflow: try registry.workflow("counter"), state: HandlerState(workflowName: "counter"),
            persistence: persistence, isolation: isolation, suspect: true, pendingInbox: 1)
        start(runtime, ["count_to": 20])
        guard case .finished(let state) = try await runtime.run() else {
            Issue.record("expected finished")
            return
        }
        #expect(state.result == 20)
        #expect(isolation.steps.withLock { $0.count } == 1 + HandlerRuntime.isolationMargin)
        #expect(persistence.log.filter { $0.type == "Tick" }.map { $0.value["n"] } == (1...20).map { .int($0) })
    }

    @Test("a suspect restored with runs in flight isolates each of them, and the margin after")
    func runsInFlightAreIsolated() async throws {
        let workflow = try registry.workflow("fanout")
        let machine = HandlerMachine(workflow: workflow)
        var state = HandlerState(workflowName: "fanout")
        (state, _) = machine.reduce(
            state,
            Tick(now: 1, .start(AnyEvent(type: "StartEvent", value: ["items": .array((1...12).map { .int($0) })]))))
        let split = try #require(state.inFlight.first)
        var output = StepOutput()
        output.stateChanges["expected"] = 12
        output.sent = (1...12).map { AnyEvent(type: "Item", value: ["value": .int($0)]) }
        (state, _) = machine.reduce(state, Tick(now: 1, .stepFinished(runID: split.id, output: output)))
        #expect(state.inFlight.count == 12)  // twelve `double` runs in flight at the crash
        let isolation = CountingIsolation(registry)
        let runtime = HandlerRuntime(
            handlerID: "f", workflow: workflow, state: state, persistence: RecordingPersistence(),
            isolation: isolation, suspect: true)
        guard case .finished(let final) = try await runtime.run() else {
            Issue.record("expected finished")
            return
        }
        #expect(final.result == .int(2 * (1...12).reduce(0, +)))
        #expect(isolation.steps.withLock { $0 } == Array(repeating: "double", count: 12) + ["collect"])
    }

    @Test("a run that ends its isolated process quarantines the handler, keeping the run for a release")
    func crashQuarantines() async throws {
        let isolation = CountingIsolation(registry, crash: true)
        let persistence = RecordingPersistence()
        let runtime = HandlerRuntime(
            handlerID: "e", workflow: try registry.workflow("echo"), state: HandlerState(workflowName: "echo"),
            persistence: persistence, isolation: isolation, suspect: true)
        start(runtime, ["message": "hi"])
        guard case .finished(let state) = try await runtime.run() else {
            Issue.record("expected finished")
            return
        }
        #expect(state.status == .failed)
        #expect(state.quarantine?.hasPrefix("quarantined: step 'echo' ended its process with signal 4") == true)
        #expect(state.inFlight.map(\.step) == ["echo"])
        #expect(persistence.last?.quarantine != nil)  // durable
        #expect(persistence.log.last?.isTerminal == true)
        // Released (as the store's release leaves it), it runs the crashed step again.
        let healthy = RecordingPersistence()
        let released = HandlerRuntime(
            handlerID: "e", workflow: try registry.workflow("echo"), state: state, persistence: healthy)
        guard case .finished(let final) = try await released.run() else {
            Issue.record("expected finished")
            return
        }
        #expect(final.status == .completed && final.result == "hi")
        #expect(healthy.log.first?.sequence == state.nextSequence)  // the log goes on, contiguous
    }

    @Test("a step whose output is nested too deep fails its handler once, cleanly")
    func outputTooDeep() async throws {
        let workflow = try Workflow(
            name: "deep", start: [],
            steps: [
                Step("nest", accepts: ["StartEvent"], emits: ["StopEvent"]) { _, context in
                    var value = JSONValue.int(1)
                    for _ in 0..<2_000 { value = .array([value]) }
                    context.set("deep", value)
                    context.stop(1)
                }
            ])
        let persistence = RecordingPersistence()
        let runtime = HandlerRuntime(
            handlerID: "d", workflow: workflow, state: HandlerState(workflowName: "deep"), persistence: persistence)
        start(runtime, [:])
        guard case .finished(let state) = try await runtime.run() else {
            Issue.record("expected finished")
            return
        }
        #expect(state.status == .failed)
        #expect(state.error?.contains("nested deeper than 256 levels") == true)
        #expect(persistence.checkpoints.withLock { $0.count } >= 1)
    }
}
