import Foundation
import LeaseholdPostgres
import LeaseholdTestSupport
import Logging
import PostgresNIO
import Testing

/// What a replica's sessions insist on whatever the server, role or database say (issue #28,
/// N3): acknowledged commits survive a crash of the primary on the same timeline, where no
/// failover check can see a loss.
@Suite("Durability settings", .enabled(if: TestDatabase.isConfigured, "needs the test Postgres (scripts/test)"))
struct DurabilitySettingsTests {
    static func setting(_ url: DatabaseURL) async throws -> String {
        try await TestDatabase.withClient(url) { client in
            var value = ""
            for try await text in try await client.query("SHOW synchronous_commit", logger: PostgresStoreTests.logger)
                .decode(String.self)
            {
                value = text
            }
            return value
        }
    }

    @Test("every session commits synchronously though the database says off; remote_apply is kept when asked")
    func synchronousCommit() async throws {
        try await TestDatabase.withStore { _, url in
            try await TestDatabase.withClient(url) { client in
                _ = try await client.query(
                    PostgresQuery(unsafeSQL: "ALTER DATABASE \(url.database) SET synchronous_commit = off"),
                    logger: PostgresStoreTests.logger)
            }
            #expect(try await Self.setting(url) == "on")
            let text = "postgres://\(url.username)@\(url.host):\(url.port)/\(url.database)"
            #expect(
                try await Self.setting(try DatabaseURL(text + "?synchronous_commit=remote_apply")) == "remote_apply")
            for weak in ["off", "local"] {
                #expect(throws: DatabaseURLError.self) { try DatabaseURL(text + "?synchronous_commit=\(weak)") }
            }
        }
    }
}
