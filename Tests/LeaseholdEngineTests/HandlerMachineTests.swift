import Foundation
import LeaseholdEngine
import LeaseholdSamples
import Testing

@Suite("Handler reducer")
struct HandlerMachineTests {
    let registry = try! Samples.registry()

    func driver(_ name: String, _ start: JSONValue, external: [AnyEvent] = []) throws -> EngineDriver {
        var driver = EngineDriver(try registry.workflow(name), external: external)
        driver.apply(.start(AnyEvent(type: "StartEvent", value: start)))
        return driver
    }

    @Test("start runs the start step and logs it as running")
    func startTick() throws {
        let driver = try driver("echo", ["message": "hi"])
        #expect(driver.pending.map(\.step) == ["echo"])
        #expect(driver.log.map(\.type) == ["StepStateChanged"])
        #expect(driver.log[0].value["step_state"] == "running")
        #expect(driver.state.started)
    }

    @Test("a second start tick is ignored")
    func duplicateStart() throws {
        var driver = try driver("echo", ["message": "hi"])
        driver.apply(.start(AnyEvent(type: "StartEvent", value: ["message": "again"])))
        #expect(driver.pending.count == 1)
    }

    @Test("stepFinished routes sent events; StopEvent completes with the result")
    func stepFinishedCompletes() async throws {
        var driver = try driver("echo", ["message": "hi"])
        await driver.runToEnd()
        #expect(driver.state.status == .completed)
        #expect(driver.state.result == "hi")
        #expect(driver.log.last?.isTerminal == true)
        #expect(driver.log.map(\.sequence) == Array(0..<Int64(driver.log.count)))
    }

    @Test("counter streams count_to ticks in order", arguments: [0, 1, 5, 40])
    func counterTicks(count: Int) async throws {
        var driver = try driver("counter", ["count_to": .int(count)])
        await driver.runToEnd()
        let ticks = driver.log.filter { $0.type == "Tick" }.map { $0.value["n"]?.intValue }
        #expect(ticks == (0..<count).map { $0 + 1 })
        #expect(driver.state.result == .int(count))
    }

    @Test("stepFailed retries with back-off timers, then succeeds")
    func stepFailedRetries() async throws {
        var driver = try driver("flaky", ["fail_times": 3])
        await driver.runToEnd()
        #expect(driver.state.status == .completed)
        #expect(driver.state.result == 4)
        #expect(driver.now > 1_000)
    }

    @Test("a step that throws past its retries fails the handler with a clear error")
    func stepFailsPastRetries() async throws {
        var driver = try driver("flaky", ["fail_times": 50])
        await driver.runToEnd()
        #expect(driver.state.status == .failed)
        #expect(driver.state.error?.contains("step 'attempt' failed after 5 attempts") == true)
        #expect(driver.log.last?.type == "WorkflowFailedEvent")
        #expect(driver.log.last?.types == ["StopEvent"])
    }

    @Test("timerFired delivers the timer's event; a stale timer id is ignored")
    func timerFired() async throws {
        var driver = try driver("timer", ["seconds": 30])
        _ = await driver.advance()
        #expect(driver.state.timers.count == 1)
        #expect(driver.state.isQuiescent)
        #expect(driver.state.nextDeadline == 1_030)
        driver.apply(.timerFired(timerID: 999))
        #expect(driver.state.timers.count == 1)
        await driver.runToEnd()
        #expect(driver.state.result == "rang")
    }

    @Test("external event re-runs the waiting step with the same input")
    func externalWakesWaiter() async throws {
        var driver = try driver("approval", ["request": "deploy"])
        _ = await driver.advance()
        #expect(driver.state.waiters.count == 1)
        #expect(driver.streamTypes == ["InputRequiredEvent"])
        #expect(driver.state.isQuiescent)
        driver.external = [AnyEvent(type: "HumanResponseEvent", value: ["response": "yes"])]
        await driver.runToEnd()
        #expect(driver.state.result == ["request": "deploy", "response": "yes"])
        #expect(driver.streamTypes == ["InputRequiredEvent", "StopEvent"])
    }

    @Test("an external event of a type nobody waits for changes nothing")
    func externalUnknownIgnored() async throws {
        var driver = try driver("approval", ["request": "x"])
        _ = await driver.advance()
        let before = driver.state
        driver.apply(.external(AnyEvent(type: "Nonsense", value: [:])))
        #expect(driver.state == before)
    }

    @Test("cancel finishes with WorkflowCancelledEvent and drops timers")
    func cancelTick() async throws {
        var driver = try driver("timer", ["seconds": 100])
        _ = await driver.advance()
        driver.apply(.cancel)
        #expect(driver.state.status == .cancelled)
        #expect(driver.state.timers.isEmpty)
        #expect(driver.log.last?.type == "WorkflowCancelledEvent")
        driver.apply(.external(AnyEvent(type: "X")))
        #expect(driver.log.last?.type == "WorkflowCancelledEvent")
    }

    @Test("timeout tick fails the handler")
    func timeoutTick() throws {
        var driver = try driver("approval", ["request": "x"])
        driver.apply(.timeout)
        #expect(driver.state.status == .failed)
        #expect(driver.state.error == "workflow timed out")
    }

    @Test("a workflow timeout arms a durable timer that fails the run")
    func workflowTimeoutTimer() async throws {
        let slow = try Workflow(
            name: "slow", start: [], external: [EventType("Never")],
            steps: [
                Step("wait", accepts: ["StartEvent"], waitsFor: ["Never"]) { _, context in
                    _ = try context.waitForEvent("Never")
                }
            ], timeout: 5)
        var driver = EngineDriver(slow)
        driver.apply(.start(AnyEvent(type: "StartEvent")))
        await driver.runToEnd()
        #expect(driver.state.status == .failed)
        #expect(driver.state.error == "workflow timed out after 5.0s")
    }

    @Test("resume re-issues in-flight runs and re-arms timers")
    func resumeTick() async throws {
        var driver = try driver("fanout", ["items": [1, 2]])
        _ = await driver.advance()
        let inFlight = driver.state.inFlight
        #expect(inFlight.count == 2)
        var restored = EngineDriver(try registry.workflow("fanout"), state: try driver.snapshot())
        restored.apply(.resume)
        #expect(restored.pending == inFlight)
        #expect(restored.log.isEmpty)
    }

    @Test("fan-in collects every worker's event before running once")
    func fanIn() async throws {
        var driver = try driver("fanout", ["items": [1, 2, 3, 4]])
        await driver.runToEnd()
        #expect(driver.state.result == 20)
        let collectRuns = driver.log.filter { $0.value["name"] == "collect" && $0.value["step_state"] == "running" }
        #expect(collectRuns.count == 1)
    }

    @Test("fan-out of nothing stops at once with 0")
    func emptyFanout() async throws {
        var driver = try driver("fanout", ["items": []])
        await driver.runToEnd()
        #expect(driver.state.result == 0)
    }
}

@Suite("Workflow validation and events")
struct WorkflowValidationTests {
    @Test("a step that cannot be reached from StartEvent is rejected, naming it")
    func unreachableStep() {
        #expect(
            throws: EngineError.invalidWorkflow(
                workflow: "w", reason: "step 'orphan' cannot be reached from StartEvent")
        ) {
            try Workflow(
                name: "w", start: [], events: [EventType("A")],
                steps: [
                    Step("begin", accepts: ["StartEvent"], emits: ["StopEvent"]) { _, _ in },
                    Step("orphan", accepts: ["A"], emits: ["StopEvent"]) { _, _ in },
                ])
        }
    }

    @Test("an emitted event that no step accepts is rejected, naming it")
    func unhandledEvent() {
        #expect(
            throws: EngineError.invalidWorkflow(
                workflow: "w", reason: "event 'A' emitted by step 'begin' is accepted by no step")
        ) {
            try Workflow(
                name: "w", start: [], events: [EventType("A")],
                steps: [
                    Step("begin", accepts: ["StartEvent"], emits: ["A", "StopEvent"]) { _, _ in }
                ])
        }
    }

    @Test("an undeclared event type is rejected")
    func undeclared() {
        #expect(throws: EngineError.self) {
            try Workflow(
                name: "w", start: [], steps: [Step("s", accepts: ["StartEvent"], emits: ["Ghost"]) { _, _ in }])
        }
    }

    @Test("a duplicate workflow name is rejected by the registry")
    func duplicateWorkflow() throws {
        var registry = try Samples.registry()
        #expect(throws: EngineError.duplicateWorkflow("echo")) { try registry.register(try Samples.echo()) }
    }

    static let badStarts: [(String, JSONValue, String)] = [
        ("counter", JSONValue.object([:]), "field 'count_to' is required"),
        ("counter", ["count_to": "five"], "field 'count_to' must be an integer"),
        ("counter", ["count_to": -1], "field 'count_to' must be ≥ 0"),
        ("fanout", ["items": [1, "x"]], "field 'items'[1] must be an integer"),
        ("echo", ["message": 3], "field 'message' must be a string"),
        ("echo", [1, 2], "the value must be a JSON object"),
    ]

    @Test("start values are checked against the start fields", arguments: badStarts)
    func badStart(name: String, value: JSONValue, message: String) throws {
        let workflow = try Samples.registry().workflow(name)
        #expect(throws: EngineError.invalidEvent(type: "StartEvent", reason: message)) {
            try workflow.validateStart(value)
        }
    }

    @Test("an event of an unknown type for the workflow is rejected")
    func unknownExternal() throws {
        let workflow = try Samples.approval()
        #expect(throws: EngineError.unknownEventType(workflow: "approval", type: "Tick")) {
            try workflow.validateExternal(AnyEvent(type: "Tick", value: ["n": 1]))
        }
        #expect(
            throws: EngineError.invalidEvent(type: "HumanResponseEvent", reason: "field 'response' must be a string")
        ) {
            try workflow.validateExternal(AnyEvent(type: "HumanResponseEvent", value: ["response": 1]))
        }
    }

    @Test("JSON round-trips and bad JSON names the problem")
    func json() throws {
        let value: JSONValue = ["a": [1, 2.5, "x\n\"", true, nil], "b": ["c": -3]]
        #expect(try JSONValue.parse(value.jsonString) == value)
        #expect(throws: EngineError.self) { try JSONValue.parse("{bad") }
    }

    @Test("event schemas list required fields")
    func schema() throws {
        let schema = try Samples.counter().startEvent.schema
        #expect(schema["required"] == ["count_to"])
        #expect(schema["properties"]?["count_to"]?["type"] == "integer")
    }
}

@Suite("Early external events")
struct EarlyExternalTests {
    @Test("an answer that arrives before the step waits is kept and used, not lost")
    func answerBeforeQuestion() async throws {
        var driver = EngineDriver(try Samples.approval())
        driver.apply(.start(AnyEvent(type: "StartEvent", value: ["request": "x"])))
        driver.apply(.external(AnyEvent(type: "HumanResponseEvent", value: ["response": "early"])))
        #expect(driver.state.pendingExternal.count == 1)
        await driver.runToEnd()
        #expect(driver.state.result == ["request": "x", "response": "early"])
    }
}
