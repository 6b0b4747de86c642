import LeaseholdEngine
import LeaseholdPostgres
import LeaseholdStore
import LeaseholdTestSupport
import PostgresNIO
import Testing

/// Purge tombstones (migration 0013) on a real PostgreSQL: how long they last, and a failover check on a
/// database that has none.
@Suite("Purge tombstones", .enabled(if: TestDatabase.isConfigured, "needs the test Postgres (scripts/test)"))
struct PurgeTombstoneTests {
    typealias C = StoreConformanceTests

    static func purged(_ store: PostgresStore, _ id: String) async throws -> HandlerRecord {
        try await store.register(C.r1, address: "test", ttl: PostgresStoreTests.ttl)
        let lease = try await store.create(C.new(id), owner: C.r1).lease
        try await store.checkpoint(
            Checkpoint(state: C.state(1), log: [C.record(0)], consumedInbox: ["start"]), lease: lease)
        guard case .cancelled(let record) = try await store.cancel(HandlerID(id)) else {
            throw StoreError.corrupt("expected a cancel")
        }
        #expect(try await store.delete(HandlerID(id), run: record.runID))
        return record
    }

    @Test("a tombstone past its hour is not reported, and the next purge deletes it")
    func expiredTombstones() async throws {
        try await TestDatabase.withStore { store, url in
            _ = try await Self.purged(store, "old")
            #expect(try await store.failoverCheck(["old"]).purged.count == 1)
            try await TestDatabase.withClient(url) { client in
                _ = try await client.query(
                    "UPDATE purged_handlers SET purged_at = now() - interval '61 minutes'",
                    logger: PostgresStoreTests.logger)
            }
            #expect(try await store.failoverCheck(["old"]).purged.isEmpty)
            let recent = try await Self.purged(store, "recent")
            let left = try await TestDatabase.withClient(url) { client in
                var ids: [String] = []
                for try await id in try await client.query(
                    "SELECT handler_id FROM purged_handlers", logger: PostgresStoreTests.logger
                )
                .decode(String.self) {
                    ids.append(id)
                }
                return ids
            }
            #expect(left == ["recent"])
            #expect(
                try await store.failoverCheck(["recent"]).purged
                    == [
                        "recent": FailoverCheckAnswer.Position(
                            token: recent.fencingToken, lastSequence: recent.lastSequence)
                    ])
        }
    }

    /// A database restored from before migration 0013 (or a standby that had not received it)
    /// has no tombstone table: the check after a failover must still be made, without them.
    @Test("a failover check on a database without the tombstone table still answers")
    func failoverCheckWithoutTombstoneTable() async throws {
        try await TestDatabase.withStore { store, url in
            try await store.register(C.r1, address: "test", ttl: PostgresStoreTests.ttl)
            let lease = try await store.create(C.new("kept"), owner: C.r1).lease
            try await TestDatabase.withClient(url) { client in
                _ = try await client.query("DROP TABLE purged_handlers", logger: PostgresStoreTests.logger)
            }
            let answer = try await store.failoverCheck(["kept", "gone"])
            #expect(answer.handlers == ["kept": FailoverCheckAnswer.Position(token: lease.token, lastSequence: -1)])
            #expect(answer.purged.isEmpty)
            #expect(answer.node != nil)
        }
    }
}
