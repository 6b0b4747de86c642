import Foundation
import LeaseholdCoordinator
import LeaseholdEngine
import LeaseholdPostgres
import LeaseholdSamples
import LeaseholdStore
import LeaseholdTestSupport
import PostgresNIO
import Testing

/// The fencing token reaches the step, and an external system can fence on it (the `ledger` sample).
@Suite("Fencing beyond the database", .enabled(if: TestDatabase.isConfigured, "needs the test Postgres (scripts/test)"))
struct LedgerFencingTests {
    /// The ledger keeps the highest token per handler and refuses a posting under a lower one:
    /// the write of a replica that lost its lease mid-step lands nowhere.
    @Test func ledgerRefusesLowerTokens() async throws {
        try await TestDatabase.withStore { store, _ in
            let ledger = PostgresLedger(client: store.client, logger: Harness.logger)
            #expect(try await ledger.post(handler: "h", posting: 1, amount: 10, token: 5))
            #expect(try await !ledger.post(handler: "h", posting: 1, amount: 99, token: 3))
            #expect(try await ledger.post(handler: "h", posting: 2, amount: 10, token: 5))
            #expect(try await ledger.post(handler: "h", posting: 2, amount: 20, token: 7))
            #expect(try await !ledger.post(handler: "h", posting: 3, amount: 99, token: 5))
            #expect(try await ledger.post(handler: "other", posting: 1, amount: 1, token: 1))
            var postings: [[Int64]] = []
            for try await (posting, amount, token) in try await store.client.query(
                "SELECT posting::bigint, amount, token FROM sample_ledger WHERE handler_id = 'h' ORDER BY posting",
                logger: Harness.logger
            ).decode((Int64, Int64, Int64).self) {
                postings.append([posting, amount, token])
            }
            #expect(postings == [[1, 10, 5], [2, 20, 7]])
        }
    }

    /// A run of the sample posts under its lease's token (StepContext.fencingToken), which the
    /// handler record shows.
    @Test func stepsPostUnderTheirLeaseToken() async throws {
        try await TestDatabase.withStore { store, _ in
            let ledger = PostgresLedger(client: store.client, logger: Harness.logger)
            try await Harness.withCoordinators([store], idle: nil, ttl: .seconds(5), ledger: ledger) { coordinators in
                let record = try await coordinators[0].start(
                    workflow: "ledger", startEvent: ["postings": 3, "amount": 10], handlerID: "book")
                let finished = try #require(try await Harness.waitFinished(store, record.id, timeout: .seconds(20)))
                #expect(finished.status == .completed)
                #expect(finished.result?.value["result"] == 30)
                var tokens: [Int64] = []
                for try await token in try await store.client.query(
                    "SELECT token FROM sample_ledger WHERE handler_id = 'book' ORDER BY posting", logger: Harness.logger
                ).decode(Int64.self) {
                    tokens.append(token)
                }
                // Every posting carries a token this handler held, never a lower one than its
                // first lease, and later postings never a lower one than earlier ones. (On a
                // starved machine the lease can lapse and be claimed again mid-run; the steps then
                // post under the new token, which the finished record shows.)
                #expect(tokens.count == 3)
                #expect(
                    tokens.allSatisfy { $0 >= record.fencingToken.rawValue && $0 <= finished.fencingToken.rawValue })
                #expect(tokens == tokens.sorted())
            }
        }
    }
}
