import Foundation
import LeaseholdEngine
import LeaseholdKit
import LeaseholdRuntime
import LeaseholdTestSupport
import Synchronization
import Testing

/// A change that only a step's start made waits, while the step runs, for the next change, at
/// most `checkpointCoalescing` (on a manual clock here, so nothing but the test moves time).
@Suite("Checkpoint coalescing")
struct CheckpointCoalescingTests {
    static let window = Duration.milliseconds(100)

    /// One step that signals `entered`, then waits for `gate` (when given), then stops.
    static func workflow(entered: AsyncStream<Void>.Continuation, gate: AsyncStream<Void>?) throws -> Workflow {
        try Workflow(
            name: "gated",
            start: [],
            steps: [
                Step("work", accepts: ["StartEvent"], emits: ["StopEvent"]) { _, context in
                    entered.yield()
                    if let gate {
                        for await _ in gate { break }
                    }
                    context.stop("done")
                }
            ])
    }

    static func runtime(_ workflow: Workflow, _ persistence: RecordingPersistence, _ clock: ManualClock)
        -> HandlerRuntime
    {
        let runtime = HandlerRuntime(
            handlerID: "g", workflow: workflow, state: HandlerState(workflowName: "gated"), persistence: persistence,
            clock: ReplicaClock(clock), checkpointCoalescing: window)
        runtime.deliver([Delivery(inboxID: "start", event: AnyEvent(type: "StartEvent", value: [:]))])
        return runtime
    }

    @Test("a short run writes one checkpoint: its start waits for its end, without the window passing")
    func shortRunOneCheckpoint() async throws {
        let (entered, enteredContinuation) = AsyncStream.makeStream(of: Void.self)
        let (gate, gateContinuation) = AsyncStream.makeStream(of: Void.self)
        let persistence = RecordingPersistence()
        let clock = ManualClock()  // never advanced: only the step's end can release the start's change
        let runtime = Self.runtime(try Self.workflow(entered: enteredContinuation, gate: gate), persistence, clock)
        try await withThrowingTaskGroup(of: RuntimeOutcome.self) { group in
            group.addTask { try await runtime.run() }
            for await _ in entered { break }  // the step runs
            try #require(await eventually { clock.sleepers == 1 })  // the start's change is held
            #expect(persistence.checkpoints.withLock { $0.isEmpty })
            gateContinuation.yield()  // the step ends, the clock still where it was
            guard case .finished = try await group.next() else {
                Issue.record("expected finished")
                return
            }
        }
        let checkpoints = persistence.checkpoints.withLock { $0 }
        #expect(checkpoints.count == 1)
        #expect(checkpoints.first?.consumedInbox == ["start"])
        #expect(checkpoints.first?.log.map(\.sequence) == [0, 1, 2])  // step started, step ended, stop
        #expect(checkpoints.first?.state.status == .completed)
        #expect(clock.sleepers == 0)  // the window's sleep was cancelled, not left behind
    }

    /// A held change nobody released would hang the drained run: the time limit fails it then.
    @Test("a stop while a change is held writes it at once in the final checkpoint", .timeLimit(.minutes(1)))
    func drainWritesHeldChange() async throws {
        let (entered, enteredContinuation) = AsyncStream.makeStream(of: Void.self)
        let (gate, gateContinuation) = AsyncStream.makeStream(of: Void.self)  // never opened: runs until stopped
        let persistence = RecordingPersistence()
        let clock = ManualClock()  // never advanced
        let runtime = Self.runtime(try Self.workflow(entered: enteredContinuation, gate: gate), persistence, clock)
        let outcome = try await withThrowingTaskGroup(of: RuntimeOutcome.self) { group in
            group.addTask { try await runtime.run() }
            for await _ in entered { break }
            try #require(await eventually { clock.sleepers == 1 })
            runtime.stop(.drain)
            return try await group.next()
        }
        withExtendedLifetime(gateContinuation) {}  // a released continuation would end the stream, and the step
        guard case .stopped(let state)? = outcome else {
            Issue.record("expected the drained run to stop")
            return
        }
        #expect(state.status == .running)
        let checkpoints = persistence.checkpoints.withLock { $0 }
        #expect(checkpoints.count == 1)
        #expect(checkpoints.first?.consumedInbox == ["start"])
        #expect(checkpoints.first?.log.map(\.isInternal) == [true])
    }

    @Test("a long step's start is written once the window has passed, before the step ends")
    func longStepStartWrittenAfterWindow() async throws {
        let (entered, enteredContinuation) = AsyncStream.makeStream(of: Void.self)
        let (gate, gateContinuation) = AsyncStream.makeStream(of: Void.self)
        let persistence = RecordingPersistence()
        let clock = ManualClock()
        let runtime = Self.runtime(try Self.workflow(entered: enteredContinuation, gate: gate), persistence, clock)
        try await withThrowingTaskGroup(of: RuntimeOutcome.self) { group in
            group.addTask { try await runtime.run() }
            for await _ in entered { break }  // the step runs
            // The checkpoint loop holds the start's change: it sleeps on the window, nothing written.
            try #require(await eventually { clock.sleepers == 1 })
            #expect(persistence.checkpoints.withLock { $0.isEmpty })
            clock.advance(by: Self.window)
            try #require(await eventually { persistence.checkpoints.withLock { $0.count } == 1 })
            let first = try #require(persistence.checkpoints.withLock { $0.first })
            #expect(first.consumedInbox == ["start"])
            #expect(first.log.map(\.isInternal) == [true])
            #expect(first.state.status == .running)
            gateContinuation.yield()  // the step ends: its end and the stop are written at once
            guard case .finished = try await group.next() else {
                Issue.record("expected finished")
                return
            }
            #expect(persistence.checkpoints.withLock { $0.count } == 2)
            #expect(persistence.log.map(\.sequence) == [0, 1, 2])
        }
    }
}
