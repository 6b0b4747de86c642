import LeaseholdPostgres
import LeaseholdTestSupport
import PostgresNIO
import Testing

/// Start-up must not wait forever on a statement that never answers (a replica started while the
/// database failed over: found by the fault run on deploy/pg-ha, 2026-11-27).
@Suite("Migration limit", .enabled(if: TestDatabase.isConfigured, "needs the test Postgres (scripts/test)"))
struct MigrationLimitTests {
    /// A statement that never answers looks the same to the client as one blocked on a lock held
    /// forever: here the migrations' advisory lock, held by another session.
    @Test("migrations whose statement never answers end within their limit, and succeed once it would")
    func migrationsEndWithinTheirLimit() async throws {
        try await TestDatabase.withStore { store, url in
            try await TestDatabase.withClient(url) { holder in
                try await holder.withConnection { session in
                    _ = try await session.query(
                        "SELECT pg_advisory_lock(\(Migrator.lockKey))", logger: PostgresStoreTests.logger)
                    let started = ContinuousClock.now
                    await #expect(throws: MigrationTimedOut.self) {
                        try await Migrator().migrate(
                            store.client, logger: PostgresStoreTests.logger, limit: .seconds(1))
                    }
                    // Generous for a loaded machine; without the limit it never returns.
                    #expect(ContinuousClock.now - started < .seconds(30))
                    _ = try await session.query(
                        "SELECT pg_advisory_unlock(\(Migrator.lockKey))", logger: PostgresStoreTests.logger)
                }
            }
            #expect(try await Migrator().migrate(store.client, logger: PostgresStoreTests.logger).isEmpty)
        }
    }
}
