import LeaseholdEngine
import LeaseholdPostgres
import LeaseholdStore
import LeaseholdTestSupport
import PostgresNIO
import Testing

/// Settling a creation whose outcome is unknown (issue #28, N4): afterwards it has either
/// committed or never will.
@Suite("Preventing a creation")
struct PreventCreationTests {
    typealias C = StoreConformanceTests

    @Test(
        "an id nobody wrote gets a failed record, and a creation arriving late is refused", arguments: StoreFactory.all)
    func prevents(factory: StoreFactory) async throws {
        try await factory.run { store in
            #expect(try await store.preventCreation(C.new("late"), reason: "not started") == nil)
            let record = try #require(try await store.handler("late"))
            #expect(record.status == .failed && record.error == "not started" && record.owner == nil)
            // The creation that was in doubt, arriving now, cannot stand.
            let tokens = try await store.reserveTokens(1)
            await #expect(throws: StoreError.handlerExists("late")) {
                _ = try await store.create(
                    C.new("late"), owner: C.r1, token: tokens[0],
                    first: Checkpoint(state: C.state(1), log: [C.record(0)], consumedInbox: ["start"]))
            }
            #expect(try await store.handler("late")?.status == .failed)
            // Without a reason (a client's id) the id is left free: the client may use it again.
            #expect(try await store.preventCreation(C.new("client-id"), reason: nil) == nil)
            #expect(try await store.handler("client-id") == nil)
            _ = try await store.create(C.new("client-id"), owner: C.r1)
        }
    }

    @Test("a creation that landed is answered, untouched", arguments: StoreFactory.all)
    func landed(factory: StoreFactory) async throws {
        try await factory.run { store in
            let created = try await store.create(C.new("landed"), owner: C.r1)
            let found = try #require(try await store.preventCreation(C.new("landed"), reason: "not started"))
            #expect(found.status == .running && found.fencingToken == created.lease.token)
        }
    }

    /// The case that matters: the creation's insert is in the database, uncommitted (its
    /// session stalled before COMMIT). The settle waits for it instead of answering "not written".
    @Test("a creation still in flight is waited for: committed, it is answered; rolled back, it is prevented")
    func inFlight() async throws {
        try await TestDatabase.withStore { store, url in
            try await store.register(C.r1, address: "test://r1", ttl: PostgresStoreTests.ttl)
            for commits in [true, false] {
                let id = commits ? "in-flight-commits" : "in-flight-rolls-back"
                try await TestDatabase.withClient(url) { writer in
                    try await writer.withConnection { connection in
                        let log = PostgresStoreTests.logger
                        try await connection.query("SET idle_in_transaction_session_timeout = '20s'", logger: log)
                        try await connection.query("BEGIN", logger: log)
                        try await connection.query(
                            PostgresQuery(
                                unsafeSQL: "INSERT INTO handlers (id, workflow_name, run_id, owner_replica) "
                                    + "VALUES ('\(id)', 'approval', 'run', 'r1')"), logger: log)
                        try await withThrowingTaskGroup(of: HandlerRecord?.self) { group in
                            group.addTask { try await store.preventCreation(C.new(id), reason: "not started") }
                            // The settle waits on the uncommitted insert (a lock), whatever the time.
                            #expect(try await eventually { try await PostgresStoreTests.waitingOnLocks(store) == 1 })
                            try await connection.query(commits ? "COMMIT" : "ROLLBACK", logger: log)
                            let answer = try #require(try await group.next())
                            if commits {
                                #expect(answer?.status == .running && answer?.owner == "r1")
                            } else {
                                #expect(answer == nil)
                                #expect(try await store.handler(HandlerID(id))?.status == .failed)
                            }
                        }
                    }
                }
            }
        }
    }
}
