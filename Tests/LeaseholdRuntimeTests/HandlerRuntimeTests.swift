import Foundation
import LeaseholdEngine
import LeaseholdRuntime
import LeaseholdSamples
import Synchronization
import Testing

/// Records checkpoints in memory (the runtime's only way out).
final class RecordingPersistence: HandlerPersistence {
    let checkpoints = Mutex<[Checkpoint]>([])
    let failWith = Mutex<(any Error)?>(nil)

    func checkpoint(_ checkpoint: Checkpoint) async throws {
        if let error = failWith.withLock({ $0 }) { throw error }
        checkpoints.withLock { $0.append(checkpoint) }
    }

    var log: [LogRecord] { checkpoints.withLock { $0.flatMap(\.log) } }
    var last: HandlerState? { checkpoints.withLock { $0.last?.state } }
}

struct LostLease: Error {}

/// Hands a runtime its start event, as a launch does.
func start(_ runtime: HandlerRuntime, _ value: JSONValue) {
    runtime.deliver([Delivery(inboxID: "start", event: AnyEvent(type: "StartEvent", value: value))])
}

@Suite("Handler runtime")
struct HandlerRuntimeTests {
    let registry = try! Samples.registry()

    @Test("an event delivered before the start event is kept and applied after it, not dropped")
    func eventBeforeStartIsKept() async throws {
        let persistence = RecordingPersistence()
        let runtime = HandlerRuntime(
            handlerID: "a", workflow: try registry.workflow("approval"), state: HandlerState(workflowName: "approval"),
            persistence: persistence)
        // The answer overtakes the start event (a send racing the launch's inbox read).
        runtime.deliver([
            Delivery(inboxID: "answer", event: AnyEvent(type: "HumanResponseEvent", value: ["response": "early"]))
        ])
        start(runtime, ["request": "r"])
        // Without the answer the handler would wait forever: bound the run so the test fails instead.
        let outcome = try await withThrowingTaskGroup(of: RuntimeOutcome?.self) { group in
            group.addTask { try await runtime.run() }
            group.addTask {
                try await Task.sleep(for: .seconds(20))
                runtime.stop(.abandon)
                return nil
            }
            defer { group.cancelAll() }
            return try await group.next()!
        }
        guard case .finished(let state)? = outcome else {
            Issue.record("the early answer was not applied: the handler never finished")
            return
        }
        #expect(state.status == .completed)
        #expect(state.result == ["request": "r", "response": "early"])
        let consumed = persistence.checkpoints.withLock { $0.flatMap(\.consumedInbox) }
        #expect(consumed == ["start", "answer"])
    }

    @Test("a finished run checkpoints its whole log, contiguous, and leaves no task")
    func finishes() async throws {
        let persistence = RecordingPersistence()
        let runtime = HandlerRuntime(
            handlerID: "c", workflow: try registry.workflow("counter"), state: HandlerState(workflowName: "counter"),
            persistence: persistence)
        start(runtime, ["count_to": 50])
        guard case .finished(let state) = try await runtime.run() else {
            Issue.record("expected finished")
            return
        }
        #expect(state.result == 50)
        #expect(persistence.log.map(\.sequence) == Array(0..<Int64(persistence.log.count)))
        #expect(persistence.log.filter { $0.type == "Tick" }.count == 50)
        #expect(persistence.last?.status == .completed)
        #expect(persistence.checkpoints.withLock { $0.flatMap(\.consumedInbox) } == ["start"])
        #expect(runtime.liveTasks == 0)
    }

    @Test("stop() leaves no task, timer or buffer: counters reach zero and the runtime is freed")
    func stopLeavesNothing() async throws {
        let persistence = RecordingPersistence()
        weak var weakRuntime: HandlerRuntime?
        let outcome: RuntimeOutcome = try await {
            let runtime = HandlerRuntime(
                handlerID: "t", workflow: try registry.workflow("timer"), state: HandlerState(workflowName: "timer"),
                persistence: persistence)
            weakRuntime = runtime
            start(runtime, ["seconds": 3600])
            return try await withThrowingTaskGroup(of: RuntimeOutcome?.self) { group in
                group.addTask { try await runtime.run() }
                // The timer task is armed once the handler is idle (waiting only for its timer).
                try #require(await within(.seconds(20)) { runtime.idleSince != nil && runtime.liveTasks >= 2 })
                #expect(runtime.liveTasks == 2)  // the timer and the checkpointer
                runtime.stop(.drain)
                let outcome = try await group.next()!!
                #expect(runtime.liveTasks == 0)
                return outcome
            }
        }()
        guard case .stopped(let state) = outcome else {
            Issue.record("expected stopped")
            return
        }
        #expect(state.timers.count == 1)  // still in the state: it survives hibernation
        #expect(persistence.last?.timers.count == 1)
        #expect(weakRuntime == nil)
    }

    @Test("a rejected checkpoint stops the runtime at once with that error")
    func leaseLostStops() async throws {
        let persistence = RecordingPersistence()
        persistence.failWith.withLock { $0 = LostLease() }
        let runtime = HandlerRuntime(
            handlerID: "a", workflow: try registry.workflow("counter"), state: HandlerState(workflowName: "counter"),
            persistence: persistence)
        start(runtime, ["count_to": 1_000_000])
        await #expect(throws: LostLease.self) { _ = try await runtime.run() }
        #expect(runtime.liveTasks == 0)
    }

    @Test("abandon writes nothing more")
    func abandon() async throws {
        let persistence = RecordingPersistence()
        let runtime = HandlerRuntime(
            handlerID: "a", workflow: try registry.workflow("approval"), state: HandlerState(workflowName: "approval"),
            persistence: persistence)
        start(runtime, ["request": "x"])
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { _ = try await runtime.run() }
            try #require(await within(.seconds(20)) { runtime.idleSince != nil })
            let before = persistence.checkpoints.withLock { $0.count }
            // The stop reason is set before stop() returns: what is delivered after it is never written.
            runtime.stop(.abandon)
            runtime.deliver([
                Delivery(inboxID: "e", event: AnyEvent(type: "HumanResponseEvent", value: ["response": "y"]))
            ])
            try await group.next()
            #expect(persistence.checkpoints.withLock { $0.count } == before)
        }
        #expect(runtime.liveTasks == 0)
    }

    @Test("a delivery with an inbox id already delivered is applied once")
    func duplicateDelivery() async throws {
        let persistence = RecordingPersistence()
        let runtime = HandlerRuntime(
            handlerID: "a", workflow: try registry.workflow("approval"), state: HandlerState(workflowName: "approval"),
            persistence: persistence)
        start(runtime, ["request": "x"])
        start(runtime, ["request": "again"])
        let answer = Delivery(inboxID: "e", event: AnyEvent(type: "HumanResponseEvent", value: ["response": "y"]))
        runtime.deliver([answer, answer])
        runtime.deliver([answer])
        guard case .finished(let state) = try await runtime.run() else {
            Issue.record("expected finished")
            return
        }
        #expect(state.result == ["request": "x", "response": "y"])
        #expect(persistence.checkpoints.withLock { $0.flatMap(\.consumedInbox) } == ["start", "e"])
    }

    /// The idle sweep takes a handler that reports itself idle for one whose work is durable: a
    /// replica past its lease then could not write that work (a CI run hibernated nothing).
    @Test("a handler is not idle while its last checkpoint is being written", .timeLimit(.minutes(1)))
    func notIdleWhileWriting() async throws {
        let persistence = HeldPersistence()
        let runtime = HandlerRuntime(
            handlerID: "w", workflow: try registry.workflow("approval"), state: HandlerState(workflowName: "approval"),
            persistence: persistence)
        start(runtime, ["request": "x"])
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { _ = try await runtime.run() }
            var sawQuiescentWrite = false
            for await checkpoint in persistence.arrived {
                #expect(runtime.idleSince == nil, "idle while a checkpoint is held")
                persistence.letOneThrough()
                // The write of the state that only waits for the answer: the rest is the stop's.
                if checkpoint.state.isQuiescent {
                    sawQuiescentWrite = true
                    break
                }
            }
            #expect(sawQuiescentWrite)
            runtime.stop(.drain)
            persistence.letOneThrough()  // a final write, if the stop makes one
            try await group.waitForAll()
        }
    }

    @Test("a step that throws past its retries fails the handler, it does not crash")
    func failingStep() async throws {
        let persistence = RecordingPersistence()
        let runtime = HandlerRuntime(
            handlerID: "f", workflow: try registry.workflow("flaky"), state: HandlerState(workflowName: "flaky"),
            persistence: persistence)
        start(runtime, ["fail_times": 100])
        guard case .finished(let state) = try await runtime.run() else {
            Issue.record("expected finished")
            return
        }
        #expect(state.status == .failed)
        #expect(state.error?.contains("flaky failure on attempt 5") == true)
    }
}

/// Holds each checkpoint until the test lets one through, and tells the test when one arrives.
final class HeldPersistence: HandlerPersistence {
    private struct Gate {
        var permits = 0
        var waiter: CheckedContinuation<Void, Never>?
    }
    let arrived: AsyncStream<Checkpoint>
    private let arrival: AsyncStream<Checkpoint>.Continuation
    private let gate = Mutex(Gate())

    init() { (arrived, arrival) = AsyncStream.makeStream() }

    func checkpoint(_ checkpoint: Checkpoint) async throws {
        arrival.yield(checkpoint)
        await withCheckedContinuation { continuation in
            let now = gate.withLock { gate -> Bool in
                guard gate.permits == 0 else {
                    gate.permits -= 1
                    return true
                }
                gate.waiter = continuation
                return false
            }
            if now { continuation.resume() }
        }
    }

    /// Lets one checkpoint through (the one held, or the next to arrive).
    func letOneThrough() {
        let waiter = gate.withLock { gate -> CheckedContinuation<Void, Never>? in
            guard let waiter = gate.waiter else {
                gate.permits += 1
                return nil
            }
            gate.waiter = nil
            return waiter
        }
        waiter?.resume()
    }
}

/// Polls an in-process condition until it holds or the deadline passes; false on timeout, so a
/// test fails instead of hanging.
func within(_ timeout: Duration, _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(1))  // a cancelled test just stops polling
    }
    return condition()
}
