import Foundation
import LeaseholdEngine
import LeaseholdPostgres
import LeaseholdRuntime
import LeaseholdStore
import LeaseholdTestSupport
import PostgresNIO
import Synchronization
import Testing

@testable import LeaseholdCoordinator

/// What the server calls (`Coordinator+API.swift`): a send succeeds once its event is durable, a run
/// is answered from its final checkpoint, and a completion reaches only a wait for the same run.
@Suite(
    "Coordinator API", .enabled(if: TestDatabase.isConfigured, "needs the test Postgres (scripts/test)"),
    .timeLimit(.minutes(3)))
struct CoordinatorAPITests {
    /// D4: once the event is durable in the inbox, `send` succeeds whatever happens next; here the
    /// reload of the hibernated handler fails (its claim throws), and the claim sweep applies the
    /// event later. A failed send would invite a retry that adds the event twice. The append that
    /// would claim answers busy (as with its row held), so the event is appended without a claim
    /// and the reload that follows is a separate claim: the one that fails.
    @Test func sendSucceedsOnceDurableEvenWhenTheReloadFails() async throws {
        try await TestDatabase.withStore { postgres, _ in
            let store = FaultyStore(postgres)
            try await Harness.withCoordinators([store], idle: .milliseconds(200), ttl: .seconds(3)) { coordinators in
                let coordinator = coordinators[0]
                let record = try await coordinator.start(
                    workflow: "approval", startEvent: ["request": "x"], handlerID: "durable-send")
                let hibernated = try await eventually(timeout: .seconds(20)) {
                    try await postgres.handler(record.id)?.hibernated == true
                }
                try #require(hibernated)
                store.busyNextClaimingAppends(1)
                store.failNextClaims(1)
                try await coordinator.send(
                    AnyEvent(type: "HumanResponseEvent", value: ["response": "yes"]), to: record.id)
                // The reload after the durable append met the injected failure (the send went on).
                #expect(store.claimsStillToFail == 0)
                let finished = try #require(try await Harness.waitFinished(postgres, record.id, timeout: .seconds(20)))
                #expect(finished.status == .completed)
                #expect(finished.result?.value["result"]?["response"] == "yes")
                let inbox = try await postgres.client.query(
                    "SELECT count(*) FROM inbox WHERE handler_id = 'durable-send' AND event_id <> 'start'",
                    logger: Harness.logger)
                var answers: Int64 = -1
                for try await count in inbox.decode(Int64.self) { answers = count }
                #expect(answers == 1)
            }
        }
    }

    @Test("a run is answered from its final checkpoint: the record is not read back, and equals a read")
    func runAnsweredFromTheFinalCheckpoint() async throws {
        try await TestDatabase.withStore { postgres, _ in
            let store = FaultyStore(postgres)
            try await Harness.withCoordinators([store], idle: nil, ttl: .seconds(60)) { coordinators in
                let reads = store.recordReads.withLock { $0 }
                let finished = try await coordinators[0].run(
                    workflow: "echo", startEvent: ["message": "hi"], handlerID: "answered")
                #expect(store.recordReads.withLock { $0 } == reads)
                #expect(finished.status == .completed)
                #expect(finished.result?.value["result"] == "hi")
                #expect(finished == (try await postgres.handler("answered")))
                // Nothing is kept for it once answered.
                #expect(coordinators[0].host.completion("answered", runID: finished.runID) == nil)
            }
        }
    }

    @Test("a finished record is handed only to a wait for the same run, never to a later run of the id")
    func completionIsKeyedByRun() async throws {
        try await TestDatabase.withStore { postgres, _ in
            try await Harness.withCoordinators([postgres], idle: nil, ttl: .seconds(60)) { coordinators in
                let host = coordinators[0].host
                let earlier = try await coordinators[0].run(
                    workflow: "echo", startEvent: ["message": "first"], handlerID: "same-id")
                // A new run of the id (after a purge) waits; the earlier run's final record arrives late.
                host.expectCompletion("same-id", runID: "later-run")
                host.finished(earlier)
                #expect(host.completion("same-id", runID: "later-run") == nil)
                host.expectCompletion("same-id", runID: earlier.runID)
                host.finished(earlier)
                #expect(host.completion("same-id", runID: earlier.runID) == earlier)
                host.forgetCompletion("same-id", runID: earlier.runID)
                host.forgetCompletion("same-id", runID: "later-run")
                #expect(host.completions.withLock { $0.awaited.isEmpty && $0.records.isEmpty })
            }
        }
    }
}
