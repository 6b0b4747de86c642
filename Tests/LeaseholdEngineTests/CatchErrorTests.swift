import Foundation
import LeaseholdEngine
import LeaseholdSamples
import Testing

/// The error-handling trio of the Python API: `catch_error` steps with `StepFailedEvent`,
/// `retryInfo`, and `WorkflowFailedEvent`'s fields — decided by the reducer, so the same on every
/// replica and across a snapshot.
@Suite("catch_error, StepFailedEvent and retry info")
struct CatchErrorTests {
    struct Boom: Error, CustomStringConvertible {
        var description: String { "boom" }
    }

    static let retry = RetryPolicy(maxAttempts: 2, initialDelay: 1, multiplier: 1, maxDelay: 1)

    func run(_ workflow: Workflow, _ start: JSONValue = [:]) async -> EngineDriver {
        var driver = EngineDriver(workflow)
        driver.apply(.start(AnyEvent(type: "StartEvent", value: start)))
        await driver.runToEnd()
        return driver
    }

    @Test("the sample: retries seen through retryInfo, then recovered by its catch_error step")
    func recoveringSample() async throws {
        let succeeded = await run(try Samples.recovering(), ["fail_times": 2])
        #expect(succeeded.state.result == ["fetched_on_try": 3])
        // A try that throws leaves nothing behind (its stream writes included): the try that
        // succeeded says it is the second retry, after the second try's error.
        let attempts = succeeded.log.filter { $0.type == "Attempted" }.map(\.value)
        #expect(attempts == [["retry_number": 2, "last_error": "source unreachable (try 2)"]])

        let recovered = await run(try Samples.recovering(), ["fail_times": 9])
        #expect(recovered.state.status == .completed)
        #expect(
            recovered.state.result
                == [
                    "recovered_from": "fetch", "attempts": 3,
                    "exception_type": "LeaseholdSamples.Samples.Unreachable",
                    "exception_message": "source unreachable (try 3)",
                ])
    }

    @Test("StepFailedEvent carries step, input, exception, attempts, elapsed time and when")
    func stepFailedFields() async throws {
        let workflow = try Workflow(
            name: "w", start: [],
            steps: [
                Step("work", accepts: ["StartEvent"], emits: ["StopEvent"], retry: Self.retry) { _, _ in throw Boom() },
                Step.catchError("handle") { failed, context in context.stop(failed.value) },
            ])
        let driver = await run(workflow, ["x": 1])
        let failed = try #require(driver.state.result)
        #expect(failed["step_name"] == "work")
        #expect(failed["input_event"] == ["type": "StartEvent", "value": ["x": 1]])
        #expect(
            failed["exception"] == [
                "exception_type": "LeaseholdEngineTests.CatchErrorTests.Boom", "exception_message": "boom",
            ])
        #expect(failed["attempts"] == 2)
        // First try at 1000, the retry at 1001 (one second's back-off), failed then.
        #expect(failed["elapsed_seconds"]?.doubleValue == 1)
        #expect(failed["failed_at"] == "1970-01-01T00:16:41.000Z")
    }

    @Test("without a handler, WorkflowFailedEvent names the step, the exception and the attempts")
    func workflowFailedFields() async throws {
        let workflow = try Workflow(
            name: "w", start: [],
            steps: [
                Step("work", accepts: ["StartEvent"], emits: ["StopEvent"], retry: Self.retry) { _, _ in throw Boom() }
            ])
        let driver = await run(workflow)
        #expect(driver.state.status == .failed)
        let terminal = try #require(driver.log.last)
        #expect(terminal.type == "WorkflowFailedEvent")
        #expect(terminal.value["step_name"] == "work")
        #expect(terminal.value["attempts"] == 2)
        #expect(terminal.value["exception"]?["exception_message"] == "boom")
        #expect(terminal.value["error"] == "step 'work' failed after 2 attempts: boom")
    }

    @Test("a recovery that fails again past maxRecoveries fails the workflow, not a second recovery")
    func maxRecoveriesPerLineage() async throws {
        func workflow(maxRecoveries: Int) throws -> Workflow {
            try Workflow(
                name: "w", start: [], events: [EventType("Again")],
                steps: [
                    Step("work", accepts: ["StartEvent", "Again"], emits: ["StopEvent"]) { _, _ in throw Boom() },
                    Step.catchError("handle", maxRecoveries: maxRecoveries, emits: ["Again"]) { _, context in
                        context.send(AnyEvent(type: "Again"))
                    },
                ])
        }
        let once = await run(try workflow(maxRecoveries: 1))
        #expect(once.state.status == .failed)
        #expect(
            once.log.filter {
                $0.type == "StepStateChanged" && $0.value["name"] == "handle" && $0.value["step_state"] == "running"
            }.count == 1)
        let thrice = await run(try workflow(maxRecoveries: 3))
        #expect(thrice.state.status == .failed)
        #expect(
            thrice.log.filter {
                $0.type == "StepStateChanged" && $0.value["name"] == "handle" && $0.value["step_state"] == "running"
            }.count == 3)
    }

    @Test("a handler that throws fails the workflow under its own name; it is never caught")
    func handlerFailure() async throws {
        let workflow = try Workflow(
            name: "w", start: [],
            steps: [
                Step("work", accepts: ["StartEvent"], emits: ["StopEvent"]) { _, _ in throw Boom() },
                Step.catchError("handle") { _, _ in throw Boom() },
            ])
        let driver = await run(workflow)
        #expect(driver.state.status == .failed)
        #expect(driver.log.last?.value["step_name"] == "handle")
    }

    @Test("a scoped handler takes its steps; the wildcard takes the rest")
    func scopedBeforeWildcard() throws {
        let workflow = try Workflow(
            name: "w", start: [], events: [EventType("Next")],
            steps: [
                Step("a", accepts: ["StartEvent"], emits: ["Next"]) { _, _ in },
                Step("b", accepts: ["Next"], emits: ["StopEvent"]) { _, _ in },
                Step.catchError("for-a", for: ["a"]) { _, _ in },
                Step.catchError("any") { _, _ in },
            ])
        #expect(workflow.catcher(of: "a")?.name == "for-a")
        #expect(workflow.catcher(of: "b")?.name == "any")
        #expect(workflow.catcher(of: "any") == nil)
    }

    @Test(
        "invalid handlers are refused when the workflow is made",
        arguments: [
            ([nil, nil] as [[String]?], "more than one catch_error step handles every step"),
            ([["nope"]], "handles 'nope', which is not a step"),
            ([["h0"]], "handles 'h0', which is a catch_error step"),
            ([["work"], ["work"]], "'work' is handled by both 'h0' and 'h1'"),
        ])
    func invalidHandlers(scopes: [[String]?], reason: String) throws {
        let handlers = scopes.enumerated().map { index, scope in Step.catchError("h\(index)", for: scope) { _, _ in } }
        do {
            _ = try Workflow(
                name: "w", start: [],
                steps: [Step("work", accepts: ["StartEvent"], emits: ["StopEvent"]) { _, _ in }] + handlers)
            Issue.record("accepted")
        } catch EngineError.invalidWorkflow(_, let why) {
            #expect(why.contains(reason), "\(why)")
        }
    }

    @Test("retry info and the recovery budget survive a snapshot between tries")
    func acrossSnapshots() async throws {
        var driver = EngineDriver(try Samples.recovering())
        driver.apply(.start(AnyEvent(type: "StartEvent", value: ["fail_times": 9])))
        _ = await driver.advance()  // the first try fails: a retry timer is armed
        let restored = try driver.snapshot()
        #expect(restored == driver.state)
        guard case .retry(let run) = try #require(restored.timers.first).action else {
            Issue.record("no retry armed")
            return
        }
        #expect(run.lastError?.message == "source unreachable (try 1)")
        #expect(run.firstAttemptAt == 1_000)
        var resumed = EngineDriver(try Samples.recovering(), state: restored)
        resumed.now = driver.now
        await resumed.runToEnd()
        #expect(resumed.state.result?["attempts"] == 3)
    }

    @Test("a run that ended its process is quarantined, not handed to catch_error")
    func quarantineIsNotCaught() throws {
        var driver = EngineDriver(try Samples.recovering())
        driver.apply(.start(AnyEvent(type: "StartEvent", value: ["fail_times": 0])))
        let run = try #require(driver.pending.first)
        driver.apply(.quarantine(runID: run.id, reason: "ended its process with signal 4"))
        #expect(driver.state.quarantine != nil)
        #expect(driver.state.inFlight.map(\.step) == ["fetch"])
        #expect(!driver.log.contains { $0.value["name"] == "fallback" })
    }
}
