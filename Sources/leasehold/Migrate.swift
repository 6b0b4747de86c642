import ArgumentParser
import Foundation
import LeaseholdCoordinator
import LeaseholdPostgres
import Logging
import PostgresNIO

/// Runs `body` with a running pool for `url`; exits 2 with a clear message when it cannot connect.
func withDatabase<T: Sendable>(
    _ url: DatabaseURL, logger: Logger, _ body: @escaping @Sendable (PostgresClient) async throws -> T
) async throws -> T {
    let client = PostgresClient(configuration: url.clientConfiguration(), backgroundLogger: quieter(logger))
    return try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask {
            await client.run()
            return nil
        }
        defer { group.cancelAll() }
        do {
            return try await bounded(.seconds(10)) { try await body(client) }
        } catch let error as MigrationError {
            throw fail("migrations: \(error)")
        } catch is OperationTimedOut {
            throw fail("cannot reach the database at \(url.host):\(url.port) (timed out)")
        } catch let error as PSQLError {
            throw fail("database at \(url.host):\(url.port): \(describe(error))")
        }
    }
}

struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Apply the sql/ migrations and exit.")

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var logging: LogOptions

    func run() async throws {
        let url: DatabaseURL
        let logger: Logger
        do {
            logger = try logging.bootstrap()
            url = try database.url(required: true)!
        } catch let error as BadSetting {
            throw fail(error.message)
        }
        let applied = try await withDatabase(url, logger: logger) { client in
            try await Migrator().migrate(client, logger: logger)
        }
        print(applied.isEmpty ? "schema is current" : "applied migrations \(applied.map(String.init).joined(separator: ", "))")
    }
}
