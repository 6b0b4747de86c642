import Foundation
import LeaseholdKit
import LeaseholdStore
import Logging
import PostgresNIO
import ServiceLifecycle

/// The PostgreSQL side of a replica, built from its URL: the connection pool, the store on it,
/// migrations, and errors described for an operator (host and port, never the password).
///
/// Run `services` first and in that order in the replica's `ServiceGroup`: the pool starts first
/// and, since graceful shutdown runs in reverse, closes last, after the coordinator has handed its
/// handlers off.
public struct Database: Sendable {
    /// Where the database is.
    public let url: DatabaseURL
    /// The connection pool (a service: see `services`).
    public let client: PostgresClient
    /// The store on the pool.
    public let store: PostgresStore
    /// The replica's clock (the store's too).
    public let clock: ReplicaClock

    /// - Parameters:
    ///   - applicationName: shown in `pg_stat_activity` (a replica passes "leasehold <replica id>").
    ///   - sessionTimeout: see `DatabaseURL.clientConfiguration` (a replica passes its lease TTL);
    ///     the store closes a connection whose request goes unanswered for twice as long.
    ///   - listenProbe: the period of the store's LISTEN liveness probe (a replica passes its renewal
    ///     period).
    ///   - groupCommit: how writes share commits (nil: each commits alone).
    ///   - logger: for the store; the pool logs at warning and above only.
    ///   - clock: the replica's clock.
    public init(
        url: DatabaseURL, applicationName: String = "leasehold", sessionTimeout: Duration? = nil,
        listenProbe: Duration? = .seconds(1), groupCommit: GroupCommitSettings? = .standard, logger: Logger,
        clock: ReplicaClock = .system
    ) {
        self.url = url
        self.clock = clock
        var quiet = logger
        if quiet.logLevel > .debug { quiet.logLevel = .warning }
        client = PostgresClient(
            configuration: url.clientConfiguration(applicationName: applicationName, sessionTimeout: sessionTimeout),
            backgroundLogger: quiet)
        store = PostgresStore(
            client: client, logger: logger, listenProbe: listenProbe,
            requestTimeout: sessionTimeout.map { $0 * 2 } ?? .seconds(30), groupCommit: groupCommit, clock: clock)
    }

    /// A server with `fsync=off` loses acknowledged commits when it crashes, on the same
    /// timeline (no failover check can see it): refused, unless the server itself says it is a
    /// throwaway (`leasehold.allow_fsync_off = on` in its configuration, as `scripts/pg` sets for
    /// tests).
    static func refuseUnsafeDurability(on connection: PostgresConnection, logger: Logger) async throws {
        let rows = try await connection.checkedQuery(
            "SELECT current_setting('fsync'), COALESCE(current_setting('leasehold.allow_fsync_off', true), 'off')",
            logger: logger)
        for try await (fsync, allowed) in rows.decode((String, String).self) where fsync == "off" {
            guard allowed == "on" else {
                throw DatabaseError(
                    message: "the database runs with fsync=off: a crash of its server would lose acknowledged "
                        + "writes, which no fencing survives; turn fsync on in postgresql.conf")
            }
            logger.warning("the database runs with fsync=off (allowed by leasehold.allow_fsync_off: tests only)")
        }
    }

    /// The pool, then the store's LISTEN connection.
    public var services: [any Service] { [client, store] }

    /// Applies the migrations, retrying while the database is not reachable yet (it may start
    /// after the replica). Needs the pool running.
    /// - Returns: the migration versions applied now.
    /// - Throws: `DatabaseError` naming host and port when `deadline` passes or a migration fails.
    @discardableResult
    public func migrate(within deadline: Duration, logger: Logger) async throws -> [Int] {
        let start = clock.now
        var lastError = ""
        var backoff = Backoff(.waitedOn)
        while clock.now - start < deadline {
            do {
                // One attempt ends within 10 s whatever the network does (`Migrator.migrate` closes a
                // connection that does not answer); the next takes a fresh connection.
                let applied = try await Migrator().migrate(client, logger: logger, limit: .seconds(10), clock: clock) {
                    try await Self.refuseUnsafeDurability(on: $0, logger: logger)
                }
                logger.info("schema ready", metadata: ["applied": "\(applied)"])
                return applied
            } catch let error as MigrationError {
                throw DatabaseError(message: "migrations: \(error)")
            } catch let error as DatabaseError {
                throw error
            } catch {
                lastError = Self.describe(error)
                logger.warning("database not reachable yet", metadata: ["database": "\(url)", "error": "\(lastError)"])
                try await clock.sleep(for: backoff.next())
            }
        }
        throw DatabaseError(message: "cannot reach the database at \(url.host):\(url.port) (\(lastError))")
    }

    /// Runs `body` with a running pool (one-shot commands: `migrate`, `status`), bounded by `limit`.
    /// - Throws: `DatabaseError` naming host and port for connection, timeout and server errors.
    public static func with<T: Sendable>(
        _ url: DatabaseURL, logger: Logger, limit: Duration = .seconds(10),
        _ body: @escaping @Sendable (Database) async throws -> T
    ) async throws -> T {
        let database = Database(url: url, logger: logger)
        return try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask {
                await database.client.run()
                return nil
            }
            defer { group.cancelAll() }
            do {
                return try await withTimeLimit(limit, clock: database.clock) { try await body(database) }
            } catch let error as MigrationError {
                throw DatabaseError(message: "migrations: \(error)")
            } catch is TimeLimitExceeded {
                throw DatabaseError(message: "cannot reach the database at \(url.host):\(url.port) (timed out)")
            } catch let error as PSQLError {
                throw DatabaseError(message: "database at \(url.host):\(url.port): \(describe(error))")
            } catch StoreError.unavailable(let reason) {
                throw DatabaseError(message: "database at \(url.host):\(url.port): \(reason)")
            }
        }
    }

    /// What went wrong, for an operator: the server's message or the client's error code.
    public static func describe(_ error: any Error) -> String {
        if let psql = error as? PSQLError {
            if let message = psql.serverInfo?[.message] { return message }
            return "\(psql.code)"
        }
        return "\(error)"
    }
}

/// The database cannot be used; the message names host and port, never the password.
public struct DatabaseError: Error, CustomStringConvertible, Sendable {
    /// What is wrong (host and port, never the password).
    public var message: String
    /// The message.
    public var description: String { message }
}
