import Foundation
import LeaseholdEngine
import LeaseholdPostgres
import LeaseholdStore
import LeaseholdTestSupport
import Testing

@testable import LeaseholdCoordinator

/// The claim sweep (`Claimer`): what no live replica runs is taken and run here, under a higher
/// token.
@Suite(
    "Claimer", .enabled(if: TestDatabase.isConfigured, "needs the test Postgres (scripts/test)"),
    .timeLimit(.minutes(3)))
struct ClaimerTests {
    @Test("a handler whose owner stopped renewing is failed over by the sweep and run to its end")
    func failedOverHandlerRunsHere() async throws {
        try await TestDatabase.withStore { postgres, _ in
            // An owner that registered once and then went silent (a crashed replica).
            let ghost = ReplicaID("ghost")
            _ = try await postgres.register(ghost, address: "test://ghost", ttl: .seconds(1))
            let new = NewHandler(
                id: "orphan", workflowName: "echo", runID: "run",
                startEvent: InboxEvent(id: "start", event: AnyEvent(type: "StartEvent", value: ["message": "m"])))
            let created = try await postgres.create(new, owner: ghost)
            try await Harness.withCoordinators([postgres], idle: nil) { coordinators in
                // Nobody sends it anything: only the sweep can find it once the ghost's lease lapses.
                let record = try await coordinators[0].awaitCompletion("orphan")
                #expect(record.status == .completed && record.result?.value["result"] == "m")
                let history = try await postgres.leaseHistory("orphan")
                #expect(history.map(\.kind) == [.created, .failedOver, .finished])
                #expect(history[1].replica == ReplicaID("r1") && history[1].token > created.lease.token)
            }
        }
    }
}
