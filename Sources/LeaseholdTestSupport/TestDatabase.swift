import Foundation
import LeaseholdPostgres
import LeaseholdStore
import Logging
import PostgresNIO

/// A fresh database on the throwaway Postgres that `scripts/test` starts (scripts/pg).
///
/// `POSTGRES_HOSTNAME/PORT/USER/PASSWORD/DB` say where the server is (postgres-nio's names).
/// When they are missing, Postgres suites are skipped, unless `LEASEHOLD_REQUIRE_POSTGRES=1`
/// (set by `.ci/run` and `scripts/test`), which turns the skip into a failure.
public enum TestDatabase {
    /// This process's environment, where the `POSTGRES_*` variables are read.
    public static var environment: [String: String] { ProcessInfo.processInfo.environment }

    /// Whether Postgres suites run: `POSTGRES_PORT` is set, or Postgres is required (then a
    /// missing server fails them instead of skipping them).
    public static var isConfigured: Bool {
        if environment["POSTGRES_PORT"] != nil { return true }
        return environment["LEASEHOLD_REQUIRE_POSTGRES"] == "1"
    }

    /// The URL of the server's admin database, from `POSTGRES_HOSTNAME/PORT/USER/DB` (defaults:
    /// 127.0.0.1, user and database `postgres`); the password variable is not read.
    /// - Throws: `TestDatabaseError` when `POSTGRES_PORT` is not set.
    public static func adminURL() throws -> DatabaseURL {
        guard let port = environment["POSTGRES_PORT"] else {
            throw TestDatabaseError(message: "POSTGRES_PORT is not set: run the tests through scripts/test")
        }
        let host = environment["POSTGRES_HOSTNAME"] ?? "127.0.0.1"
        let user = environment["POSTGRES_USER"] ?? "postgres"
        let database = environment["POSTGRES_DB"] ?? "postgres"
        return try DatabaseURL("postgres://\(user)@\(host):\(port)/\(database)")
    }

    static var logger: Logger {
        var logger = Logger(label: "test-db")
        logger.logLevel = .warning
        return logger
    }

    /// Creates a new database with the schema migrated, runs `body` with a running client and
    /// store on it, then drops the database. The store commits as a replica's does (group commit
    /// on) unless told otherwise.
    public static func withStore<T: Sendable>(
        groupCommit: GroupCommitSettings? = .standard,
        _ body: @Sendable (PostgresStore, DatabaseURL) async throws -> T
    ) async throws -> T {
        try await withEmptyDatabase { url in
            try await withClient(url) { client in
                try await Migrator().migrate(client, logger: logger)
                let store = PostgresStore(client: client, logger: logger, groupCommit: groupCommit)
                return try await withThrowingTaskGroup(of: T?.self) { group in
                    group.addTask {
                        try await store.run()
                        return nil
                    }
                    defer { group.cancelAll() }
                    return try await body(store, url)
                }
            }
        }
    }

    /// Creates a new, empty database (no schema), runs `body` with its URL, then drops it: for a
    /// test that applies migrations itself (an upgrade from an older schema).
    public static func withEmptyDatabase<T: Sendable>(_ body: @Sendable (DatabaseURL) async throws -> T)
        async throws -> T
    {
        let admin = try adminURL()
        let name = "t_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()
        _ = try await withClient(admin) { client in
            try await client.query(PostgresQuery(unsafeSQL: "CREATE DATABASE \(name)"), logger: logger)
        }
        var database = admin
        database.database = name
        let result = try await body(database)
        // Cleanup only: a database left behind dies with the test cluster's temp dir.
        _ = try? await withClient(admin) { client in
            try await client.query(
                PostgresQuery(unsafeSQL: "DROP DATABASE IF EXISTS \(name) WITH (FORCE)"), logger: logger)
        }
        return result
    }

    /// Makes the database at `url` answer as another node, as a failover does: from now on
    /// `leasehold_database_node()` reports its timeline `timelines` later than the server's (and
    /// `systemIdentifier`, when given, instead of its own), and every other session to it is
    /// ended, as a failover ends them (the pools reconnect, to "the new node"). Renewals, the
    /// failover check and the store's node gate all read that function, so they all see the move.
    public static func moveNode(_ url: DatabaseURL, timelines: Int, systemIdentifier: String? = nil) async throws {
        let system = systemIdentifier.map { "'\($0.replacingOccurrences(of: "'", with: "''"))'" } ?? "NULL"
        try await withClient(url) { client in
            for statement in [
                """
                DO $$ BEGIN
                    IF to_regproc('leasehold_database_node_real') IS NULL THEN
                        ALTER FUNCTION leasehold_database_node() RENAME TO leasehold_database_node_real;
                    END IF;
                END $$
                """,
                """
                CREATE OR REPLACE FUNCTION leasehold_database_node(
                    OUT system_identifier text, OUT timeline integer, OUT node text, OUT synchronous_standbys integer)
                LANGUAGE sql VOLATILE AS $$
                    SELECT COALESCE(\(system), r.system_identifier), r.timeline + \(timelines), r.node,
                        r.synchronous_standbys
                    FROM leasehold_database_node_real() r
                $$
                """,
                """
                SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                WHERE datname = current_database() AND pid <> pg_backend_pid()
                """,
            ] {
                try await client.query(PostgresQuery(unsafeSQL: statement), logger: logger)
            }
        }
    }

    /// Runs `body` with a running `PostgresClient` for `url`.
    public static func withClient<T: Sendable>(
        _ url: DatabaseURL, _ body: @Sendable (PostgresClient) async throws -> T
    ) async throws -> T {
        let client = PostgresClient(configuration: url.clientConfiguration(), backgroundLogger: logger)
        return try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask {
                await client.run()
                return nil
            }
            defer { group.cancelAll() }
            return try await body(client)
        }
    }
}

/// The test database cannot be reached as configured.
public struct TestDatabaseError: Error, CustomStringConvertible {
    /// What is wrong.
    public var message: String
    /// The message.
    public var description: String { message }
}

/// Waits for `condition` (polled every 10 ms) up to `timeout`; returns whether it held.
/// For conditions that have no event to await (another process's state, a database row).
public func eventually(
    timeout: Duration = .seconds(10), _ condition: () async throws -> Bool
) async rethrows -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        // Cancelled: stop polling and give the condition one last look (a `rethrows` function
        // cannot throw the CancellationError).
        do { try await Task.sleep(for: .milliseconds(10)) } catch { break }
    }
    return try await condition()
}
