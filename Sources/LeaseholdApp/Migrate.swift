import ArgumentParser
import Foundation
import LeaseholdPostgres
import Logging

/// Runs `body` with a running database; exits 2 with a clear message when it cannot connect.
func withDatabase<T: Sendable>(
    _ url: DatabaseURL, logger: Logger, limit: Duration = .seconds(10),
    _ body: @escaping @Sendable (Database) async throws -> T
) async throws -> T {
    do {
        return try await Database.with(url, logger: logger, limit: limit, body)
    } catch let error as DatabaseError {
        throw fail(error.message)
    }
}

struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Apply the sql/ migrations and exit.")

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var logging: LogOptions

    func run() async throws {
        let (logger, url) = try databaseCommand(database, logging)
        let applied = try await withDatabase(url, logger: logger) { database in
            try await Migrator().migrate(database.client, logger: logger)
        }
        print(
            applied.isEmpty
                ? "schema is current" : "applied migrations \(applied.map(String.init).joined(separator: ", "))")
    }
}
