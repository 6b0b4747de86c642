import Foundation
import LeaseholdPostgres
import Logging
import PostgresNIO
import ServiceLifecycle
import Synchronization

/// What a process of a Leasehold application offers its workflows when it makes them: the
/// cluster's database URL, the environment, a logger, and pools of their own for external systems.
///
/// A pool made here is the application's: bounded by its own `maxConnections`, never one of the
/// coordinator's write connections (a slow external system cannot hold up a renewal). The
/// process runs it and closes it after the coordinator has stopped.
public final class ApplicationResources: Sendable {
    /// The cluster's database URL (`--database-url` or `LEASEHOLD_DATABASE_URL`); nil where the
    /// process runs on the in-memory store.
    public let databaseURL: String?
    /// The process's environment variables (an application's own settings live here).
    public let environment: [String: String]
    /// The process's logger.
    public let logger: Logger
    private let pools = Mutex<[PostgresClient]>([])

    init(databaseURL: String?, environment: [String: String], logger: Logger) {
        self.databaseURL = databaseURL
        self.environment = environment
        self.logger = logger
    }

    /// A connection pool of the application's own, to `url` (default: the cluster's database).
    ///
    /// - Parameters:
    ///   - url: a `postgres://` URL; nil for the cluster's database.
    ///   - maxConnections: the most connections the pool opens (at least 1).
    ///   - name: shown in `pg_stat_activity`.
    /// - Returns: the pool, or nil when `url` is nil and the process has no database (a single
    ///   process on the in-memory store: the application keeps its external system in memory).
    /// - Throws: `DatabaseURLError` for a malformed URL.
    public func postgres(url: String? = nil, maxConnections: Int = 4, name: String = "application")
        throws -> PostgresClient?
    {
        guard let text = url ?? databaseURL else { return nil }
        var configuration = try DatabaseURL(text).clientConfiguration(applicationName: name)
        configuration.options.maximumConnections = max(1, maxConnections)
        configuration.options.minimumConnections = 0
        var quiet = logger
        if quiet.logLevel > .debug { quiet.logLevel = .warning }
        let client = PostgresClient(configuration: configuration, backgroundLogger: quiet)
        pools.withLock { $0.append(client) }
        return client
    }

    /// The pools made so far, as services for the process's service group.
    var services: [any Service] { pools.withLock { $0 } }

    /// Runs `body` with the pools made so far running, and stops them after it.
    func withPoolsRunning<T: Sendable>(_ body: @Sendable () async throws -> T) async throws -> T {
        let pools = self.pools.withLock { $0 }
        return try await withThrowingTaskGroup(of: T?.self) { group in
            for pool in pools {
                group.addTask {
                    await pool.run()
                    return nil
                }
            }
            defer { group.cancelAll() }
            return try await body()
        }
    }
}
