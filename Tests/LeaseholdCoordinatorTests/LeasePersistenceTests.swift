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

/// A runtime's writes under its lease (`LeasePersistence`): checkpoints whose answer was lost.
/// (The first write of an unwritten run is `UnwrittenRunTests`.)
@Suite(
    "Lease persistence", .enabled(if: TestDatabase.isConfigured, "needs the test Postgres (scripts/test)"),
    .timeLimit(.minutes(3)))
struct LeasePersistenceTests {
    /// [pg-ha] A checkpoint whose commit happened but whose answer was lost (as when a database
    /// failover kills the connection after COMMIT): the replica neither assumes it failed nor
    /// writes it twice. Its retry finds its own sequences already written, reads the handler, and
    /// goes on; the log has every tick exactly once.
    @Test func checkpointWhoseAnswerWasLostIsNotWrittenTwice() async throws {
        try await TestDatabase.withStore { postgres, _ in
            let store = FaultyStore(postgres)
            try await Harness.withCoordinators([store], idle: nil, ttl: .seconds(5)) { coordinators in
                store.loseCheckpointAnswers()
                let record = try await coordinators[0].start(
                    workflow: "counter", startEvent: ["count_to": 20, "tick_ms": 5], handlerID: "lost-answer")
                let finished = try #require(try await Harness.waitFinished(postgres, record.id))
                #expect(finished.status == .completed)
                let log = try await postgres.events(record.id, after: -1, limit: 1000)
                #expect(log.map(\.sequence) == Array(0..<Int64(log.count)))
                #expect(log.filter { $0.type == "Tick" }.compactMap { $0.value["n"]?.intValue } == Array(1...20))
                // The answers really were lost, and the handler never changed hands.
                #expect(store.answersStillToLose == 0)
                #expect(coordinators[0].fenceCounts.rejectedWrites == 0)
                #expect(try await postgres.leaseHistory(record.id).map(\.kind) == [.created, .finished])
            }
        }
    }
}
