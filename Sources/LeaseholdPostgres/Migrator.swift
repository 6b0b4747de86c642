import Foundation
import LeaseholdKit
import Logging
import PostgresNIO

/// Applies `sql/NNNN_name.sql` in order, each file in one transaction, recorded in
/// `schema_migrations`. Runs under an advisory lock, so replicas starting together migrate once.
public struct Migrator: Sendable {
    /// One migration file.
    public struct Migration: Sendable {
        /// The number its file name starts with; migrations apply in this order.
        public var version: Int
        /// Its file name, recorded in `schema_migrations`.
        public var name: String
        /// Its statements, sent one at a time in one transaction.
        public var statements: [String]
    }

    /// Taken with `pg_advisory_lock` while migrating.
    package static let lockKey: Int64 = 0x4c65_6173_6568_6f6c

    /// The migrations this migrator applies.
    public let migrations: [Migration]

    /// A migrator of `migrations`; nil: the bundled ones.
    public init(migrations: [Migration]? = nil) throws {
        self.migrations = try migrations ?? Migrator.bundled()
    }

    /// The migrations shipped with the binary (the `sql/` folder, as a resource).
    public static func bundled() throws -> [Migration] {
        guard let folder = Bundle.module.url(forResource: "Migrations", withExtension: nil) else {
            throw MigrationError(message: "the sql/ migrations are missing from the build")
        }
        let files = try FileManager.default.contentsOfDirectory(atPath: folder.path)
            .filter { $0.hasSuffix(".sql") }.sorted()
        return try files.map { file in
            guard let version = Int(file.prefix { $0.isNumber }) else {
                throw MigrationError(message: "migration \(file) must start with its number")
            }
            let text = try String(contentsOf: folder.appendingPathComponent(file), encoding: .utf8)
            return Migration(version: version, name: file, statements: split(text))
        }
    }

    /// The versions shipped with the binary, in order.
    /// Empty when the bundle cannot be read; `migrate` then throws the reason.
    public static var bundledVersions: [Int] { ((try? bundled()) ?? []).map(\.version) }

    /// Splits a file on `-- split` lines; the extended protocol takes one statement per query.
    static func split(_ text: String) -> [String] {
        var statements: [String] = []
        var current: [Substring] = []
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.trimmingCharacters(in: .whitespaces) == "-- split" {
                statements.append(current.joined(separator: "\n"))
                current = []
            } else {
                current.append(line)
            }
        }
        statements.append(current.joined(separator: "\n"))
        return statements.filter { statement in
            statement.split(separator: "\n").contains {
                !$0.trimmingCharacters(in: .whitespaces).hasPrefix("--")
                    && !$0.trimmingCharacters(in: .whitespaces).isEmpty
            }
        }
    }

    /// Applies every migration not yet applied, on one connection, within `limit`.
    ///
    /// Past `limit` the connection is closed and `MigrationTimedOut` thrown: postgres-nio does not
    /// cancel a statement it has sent (see `RequestWatchdog`), so a statement sent to a node that
    /// died under it (a replica started while the database failed over) would otherwise wait
    /// forever, and so would start-up (found by the fault run on deploy/pg-ha: a replica restarted
    /// during a failover never became ready). Closing the connection fails that statement.
    /// - Parameter check: run on the same connection after the migrations, within the same limit
    ///   (the start-up's check of the server's settings).
    /// - Returns: the versions applied by this call (empty when the schema was current).
    @discardableResult
    public func migrate(
        _ client: PostgresClient, logger: Logger, limit: Duration = .seconds(20), clock: ReplicaClock = .system,
        then check: (@Sendable (PostgresConnection) async throws -> Void)? = nil
    ) async throws -> [Int] {
        try await client.withConnection { connection in
            let cut = OnceFlag()  // set once the connection was cut: nothing more is sent on it
            do {
                return try await withTimeLimit(
                    limit, clock: clock, timedOut: { MigrationTimedOut() },
                    whenLimitPasses: {
                        // Nothing more is sent on it once cut (a statement sent to a closing
                        // connection could itself be lost): the session's end releases the
                        // advisory lock, and the statement waiting fails.
                        cut.set()
                        try? await connection.close()
                    }
                ) {
                    let applied = try await locked(on: connection, logger: logger, cut: cut)
                    try await check?(connection)
                    return applied
                }
            } catch  where cut.isSet {
                // The statement cut short fails with the closed connection's error.
                throw MigrationTimedOut()
            }
        }
    }

    private func locked(on connection: PostgresConnection, logger: Logger, cut: OnceFlag) async throws -> [Int] {
        try await connection.checkedQuery("SELECT pg_advisory_lock(\(Self.lockKey))", logger: logger)
        do {
            let applied = try await apply(on: connection, logger: logger)
            try await connection.checkedQuery("SELECT pg_advisory_unlock(\(Self.lockKey))", logger: logger)
            return applied
        } catch {
            // Best effort: the session's end releases the lock anyway.
            if !cut.isSet {
                _ = try? await connection.checkedQuery("SELECT pg_advisory_unlock(\(Self.lockKey))", logger: logger)
            }
            throw error
        }
    }

    private func apply(on connection: PostgresConnection, logger: Logger) async throws -> [Int] {
        try await connection.checkedQuery(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())
            """, logger: logger)
        var done = Set<Int>()
        for try await version in try await connection.checkedQuery(
            "SELECT version FROM schema_migrations", logger: logger
        )
        .decode(Int.self) {
            done.insert(version)
        }
        var applied: [Int] = []
        for migration in migrations where !done.contains(migration.version) {
            // Checked, as every statement is: postgres-nio's own `withTransaction` writes its BEGIN
            // and COMMIT unchecked, and one lost on a session a failover ended holds start-up.
            try await connection.checkedTransaction(logger: logger) { connection in
                for statement in migration.statements {
                    try await connection.checkedQuery(PostgresQuery(unsafeSQL: statement), logger: logger)
                }
                try await connection.checkedQuery(
                    "INSERT INTO schema_migrations (version, name) VALUES (\(migration.version), \(migration.name))",
                    logger: logger)
            }
            logger.info(
                "migration applied", metadata: ["version": "\(migration.version)", "name": "\(migration.name)"])
            applied.append(migration.version)
        }
        return applied
    }
}

/// The migrations shipped with the binary cannot be read.
public struct MigrationError: Error, CustomStringConvertible, Sendable {
    /// What is wrong.
    public var message: String
    /// The message.
    public var description: String { message }
}

/// Migrations did not finish within their limit (their connection was closed).
public struct MigrationTimedOut: Error, CustomStringConvertible {
    /// Says that the migrations timed out.
    public var description: String { "migrations did not finish in time (their connection was closed)" }
}
