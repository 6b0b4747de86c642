import Foundation
import LeaseholdEngine
import LeaseholdPostgres
import LeaseholdStore
import LeaseholdTestSupport
import Logging
import PostgresNIO
import Testing

/// The inbox a claim answers is read with the claim statement's snapshot; FOR UPDATE locks the
/// row's newest version. These must agree, or events consumed in between are applied twice.
@Suite("Claim and inbox", .enabled(if: TestDatabase.isConfigured, "needs the test Postgres (scripts/test)"))
struct ClaimInboxTests {
    static let ttl = Duration.seconds(30)

    /// The claim statement exactly as the store sends it, with a gate joined into its candidate
    /// scan: the snapshot is taken, then the gate, then the row lock.
    static func pausedClaim(_ store: PostgresStore, replica: String) throws -> PostgresQuery {
        try paused(store.claimStatement(replica: replica, limit: 10), scan: "FROM handlers h\n")
    }

    /// The gate a paused statement waits at (made by `claimable`): a function that sleeps in
    /// 10 ms steps while `paused_gate` holds no row (a volatile function's queries see what committed after its
    /// statement's snapshot; the statement's own scans do not). `inboxAfterChangeDuring` opens it
    /// once its change committed, so the pause lasts exactly until then, however loaded the
    /// machine. (A fixed `pg_sleep(1)` did not: beside a CPU hog and a fault run the change once
    /// committed after the second, 2026-12-07; an advisory lock fell under the append's
    /// `lock_timeout`.) Bounded: it gives up after 60 s.
    static let gateSetUp = [
        "CREATE TABLE paused_gate (opened boolean)",
        """
        CREATE FUNCTION paused_gate_wait() RETURNS int LANGUAGE plpgsql VOLATILE AS $$
        BEGIN
            FOR i IN 1..6000 LOOP
                IF EXISTS (SELECT 1 FROM paused_gate) THEN RETURN 1; END IF;
                PERFORM pg_sleep(0.01);
            END LOOP;
            RETURN 0;
        END $$
        """,
        "INSERT INTO paused_gate VALUES (true)",  // open unless a change is to come in between
    ]

    /// `query` with the gate joined into its scan `scan` (`FROM handlers h…`) of the handlers row.
    static func paused(_ query: PostgresQuery, scan: String) throws -> PostgresQuery {
        let range = try #require(query.sql.range(of: scan), "the statement no longer scans '\(scan)'")
        var sql = query.sql
        let table = "FROM handlers h"
        try #require(scan.hasPrefix(table))
        sql.replaceSubrange(
            range, with: "\(table), (SELECT paused_gate_wait()) AS pause\(scan.dropFirst(table.count))")
        return PostgresQuery(unsafeSQL: sql, binds: query.binds)
    }

    /// A registered r1 and r2, and handler "h" created by r1 and released: claimable, its start
    /// event pending.
    static func claimable(_ store: PostgresStore) async throws {
        for statement in gateSetUp {
            _ = try await store.client.query(PostgresQuery(unsafeSQL: statement), logger: PostgresStoreTests.logger)
        }
        try await store.register("r1", address: "test://r1", ttl: Self.ttl)
        try await store.register("r2", address: "test://r2", ttl: Self.ttl)
        let lease = try await store.create(StoreConformanceTests.new("h"), owner: "r1").lease
        try await store.release(nil, lease: lease)
    }

    /// Runs `query` (paused between its snapshot and its row lock) while another session
    /// consumes h's start event and advances its row, and commits, as an old owner's checkpoint
    /// would; answers the query's inbox column.
    static func inboxAfterChangeDuring(_ store: PostgresStore, _ query: PostgresQuery, index: Int? = nil)
        async throws -> String??
    {
        _ = try await PostgresStoreTests.count(
            store, "WITH closed AS (DELETE FROM paused_gate RETURNING 1) SELECT count(*) FROM closed")
        return try await withThrowingTaskGroup(of: String??.self) { group in
            group.addTask { try await Self.inboxColumn(store, query, index: index) }
            // The statement took its snapshot and waits at the gate.
            try #require(try await PostgresStoreTests.oneSessionSleeps(store))
            _ = try await PostgresStoreTests.count(
                store,
                """
                WITH consumed AS (UPDATE inbox SET consumed = true WHERE handler_id = 'h' RETURNING 1),
                advanced AS (UPDATE handlers SET last_sequence = 0 WHERE id = 'h' RETURNING 1)
                SELECT (SELECT count(*) FROM consumed) + (SELECT count(*) FROM advanced)
                """)
            _ = try await PostgresStoreTests.count(
                store, "WITH opened AS (INSERT INTO paused_gate VALUES (true) RETURNING 1) SELECT count(*) FROM opened")
            return try #require(try await group.next())
        }
    }

    @Test("a change committed between a claim's snapshot and its lock: the claim answers no inbox (read after launch)")
    func claimSeesNoStaleInbox() async throws {
        try await TestDatabase.withStore { store, _ in
            try await Self.claimable(store)

            // Undisturbed, the paused claim answers the pending inbox (the pause changes nothing).
            let quiet = try await Self.inboxColumn(store, try Self.pausedClaim(store, replica: "r2"))
            #expect((quiet ?? nil)?.contains("\"start\"") == true)
            try await store.register("r2", address: "test://r2", ttl: Self.ttl)  // voids r2's claim
            #expect(try await store.handler("h")?.owner == nil)

            let answered = try await Self.inboxAfterChangeDuring(store, try Self.pausedClaim(store, replica: "r2"))
            // The claim locked the newest row (it did claim it) but its snapshot's inbox still
            // showed the start event: it must not answer that inbox.
            #expect(answered == .some(nil))
            #expect(try await store.handler("h")?.owner == "r2")
        }
    }

    @Test("the same for an append that claims: it claims, and answers no inbox (read after launch)")
    func appendClaimSeesNoStaleInbox() async throws {
        try await TestDatabase.withStore { store, _ in
            try await Self.claimable(store)
            let event = #"{"type":"X","value":{}}"#
            let scan = "FROM handlers h WHERE"
            let append = store.appendClaimStatement(id: "h", eventID: "e1", event: event, replica: "r2")
            let answered = try await Self.inboxAfterChangeDuring(
                store, try Self.paused(append, scan: scan), index: 17)
            #expect(answered == .some(nil))
            #expect(try await store.handler("h")?.owner == "r2")
            #expect(try await store.pendingInbox("h").map(\.id) == ["e1"])

            // Undisturbed, the same append answers the pending inbox (the pause changes nothing).
            try await store.register("r2", address: "test://r2", ttl: Self.ttl)  // voids r2's claim
            let quiet = try await Self.inboxColumn(
                store,
                try Self.paused(
                    store.appendClaimStatement(id: "h", eventID: "e2", event: event, replica: "r2"), scan: scan),
                index: 17)
            #expect((quiet ?? nil)?.contains("\"e1\"") == true)
            #expect((quiet ?? nil)?.contains("\"e2\"") == true)
        }
    }

    @Test("an append that may claim does not wait on a held row: it writes nothing and says so")
    func claimingAppendDoesNotWait() async throws {
        try await TestDatabase.withStore { store, url in
            try await store.register("r1", address: "test://r1", ttl: Self.ttl)
            try await store.register("r2", address: "test://r2", ttl: Self.ttl)
            let lease = try await store.create(StoreConformanceTests.new("h"), owner: "r1").lease
            try await store.release(nil, lease: lease)  // claimable
            let event = InboxEvent(id: "e1", event: AnyEvent(type: "HumanResponseEvent", value: ["response": "y"]))
            try await PostgresStoreTests.withRowLocked("h", url) {
                // Held for the whole block: the append gives up (lock_timeout) instead of waiting.
                await #expect(throws: StoreError.handlerBusy("h")) {
                    _ = try await store.appendInbox("h", event, accepting: nil, from: "r2", claim: true)
                }
            }
            #expect(try await store.pendingInbox("h").map(\.id) == ["start"])
            #expect(try await store.handler("h")?.owner == nil)
            // Free again, the same append claims.
            let receipt = try await store.appendInbox("h", event, accepting: nil, from: "r2", claim: true)
            #expect(receipt.claimed?.pendingInbox?.map(\.id) == ["start", "e1"])
        }
    }

    /// Runs a claim statement; the inbox column (17: after the record's 15 columns, the snapshot
    /// and how; or `index`) of its one row (nil: NULL), or nil when no row.
    static func inboxColumn(_ store: PostgresStore, _ query: PostgresQuery, index: Int? = nil) async throws
        -> String??
    {
        var answer: String??
        for try await row in try await store.client.query(query, logger: PostgresStoreTests.logger) {
            let columns = row.makeRandomAccess()
            answer = .some(try columns[index ?? 17].decode(String?.self))
        }
        return answer
    }
}
