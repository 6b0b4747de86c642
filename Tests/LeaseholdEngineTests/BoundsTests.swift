import Foundation
import LeaseholdEngine
import LeaseholdSamples
import Testing

/// Valid input cannot trap: every durable delay is clamped where it enters, every value that
/// enters a handler is held to one depth, and the samples' arithmetic is checked.
@Suite("Bounds")
struct BoundsTests {
    @Test("delays: NaN and negative are 0, infinite and absurd are ten years")
    func delays() {
        #expect(Bounds.delay(.nan) == 0)
        #expect(Bounds.delay(-5) == 0)
        #expect(Bounds.delay(1.5) == 1.5)
        #expect(Bounds.delay(.infinity) == Bounds.longestDelay)
        #expect(Bounds.delay(1e300) == Bounds.longestDelay)
        // What the runtime sleeps on must be representable.
        _ = Duration.seconds(Bounds.longestDelay)
    }

    @Test("a step's timer of 1e300 s, NaN or infinity is armed at most ten years out")
    func timersClamped() throws {
        let workflow = try Workflow(
            name: "t", start: [], events: [EventType("Rang")],
            steps: [
                Step("arm", accepts: ["StartEvent"], emits: ["Rang"]) { _, _ in },
                Step("ring", accepts: ["Rang"], emits: ["StopEvent"]) { _, _ in },
            ])
        let machine = HandlerMachine(workflow: workflow)
        var state = HandlerState(workflowName: "t")
        (state, _) = machine.reduce(state, Tick(now: 1000, .start(AnyEvent(type: "StartEvent", value: [:]))))
        let run = try #require(state.inFlight.first)
        var output = StepOutput()
        for seconds in [1e300, .nan, .infinity, -1] {
            output.timers.append(TimerRequest(seconds: seconds, event: AnyEvent(type: "Rang", value: [:])))
        }
        let (next, commands) = machine.reduce(state, Tick(now: 1000, .stepFinished(runID: run.id, output: output)))
        let deadlines = next.timers.map(\.deadline)
        #expect(deadlines == [1000 + Bounds.longestDelay, 1000, 1000 + Bounds.longestDelay, 1000])
        #expect(commands.contains(.armTimer(id: next.timers[0].id, deadline: 1000 + Bounds.longestDelay)))
    }

    @Test("depth is counted without recursion, and a value deeper than the limit is named")
    func depth() throws {
        var deep = JSONValue.int(1)
        for _ in 0..<2_000 { deep = .array([deep]) }  // (deeper still would overflow the stack in its deinit)
        #expect(deep.depth(upTo: 300) == 301)
        #expect(deep.boundsProblem == "nested deeper than 256 levels")
        var fits = JSONValue.int(1)
        for _ in 0..<Bounds.maximumDepth { fits = .object(["a": fits]) }
        #expect(fits.depth() == Bounds.maximumDepth)
        #expect(fits.boundsProblem == nil)
        #expect(JSONValue.double(.nan).boundsProblem != nil)
        var output = StepOutput()
        output.stateChanges["k"] = deep
        #expect(output.boundsProblem == "its context key 'k' nested deeper than 256 levels")
    }

    @Test("a request nested deeper than the limit is refused; one at the limit is read")
    func requestDepth() throws {
        let limit =
            String(repeating: "[", count: Bounds.maximumDepth) + String(repeating: "]", count: Bounds.maximumDepth)
        _ = try JSONValue.parse(limit)
        let over = "[" + limit + "]"
        #expect(throws: EngineError.self) { try JSONValue.parse(over) }
    }

    @Test("the timer sample refuses 1e300 seconds naming the field; the fanout sample fails on overflow")
    func samples() async throws {
        let timer = try Samples.timer()
        #expect(throws: EngineError.self) { try timer.validateStart(["seconds": .double(1e300)]) }
        do {
            try timer.validateStart(["seconds": .double(1e300)])
        } catch {
            #expect("\(error)".contains("seconds"))
        }
        try timer.validateStart(["seconds": 5])
        let double = try #require(try Samples.fanout().step(named: "double"))
        let context = StepContext(stepName: "double", attempt: 1, state: [:], received: nil)
        await #expect(throws: Samples.ArithmeticOverflow.self) {
            try await double.body(AnyEvent(type: "Item", value: ["value": .int(1 << 62)]), context)
        }
    }

    @Test("quarantine keeps the state and fails the handler; release resumes the run that crashed")
    func quarantineAndRelease() throws {
        let machine = HandlerMachine(workflow: try Samples.echo())
        var state = HandlerState(workflowName: "echo")
        (state, _) = machine.reduce(state, Tick(now: 1, .start(AnyEvent(type: "StartEvent", value: ["message": "x"]))))
        let run = try #require(state.inFlight.first)
        let (quarantined, commands) = machine.reduce(
            state, Tick(now: 2, .quarantine(runID: run.id, reason: "ended its process with signal 4")))
        #expect(quarantined.status == .failed)
        #expect(quarantined.error == "quarantined: step 'echo' ended its process with signal 4")
        #expect(quarantined.inFlight == [run])  // kept for the release
        #expect(commands.contains(.finished))
        #expect(commands.contains { if case .log(let record) = $0 { record.isTerminal } else { false } })
        // Finished: nothing else moves it, but a release.
        #expect(machine.reduce(quarantined, Tick(now: 3, .resume)).1.isEmpty)
        let (released, again) = machine.reduce(quarantined, Tick(now: 3, .release))
        #expect(released.status == .running && released.quarantine == nil && released.error == nil)
        #expect(again == [.runStep(run)])
        // Release of a handler that is not quarantined does nothing.
        #expect(machine.reduce(state, Tick(now: 3, .release)).1.isEmpty)
    }
}
