import LeaseholdPostgres
import LeaseholdStore
import LeaseholdTestSupport

/// A way to get a fresh store; every store implementation adds one and passes the same suite.
struct StoreFactory: Sendable, CustomTestStringConvertible {
    let name: String
    let run: @Sendable (@Sendable (any HandlerStore) async throws -> Void) async throws -> Void

    var testDescription: String { name }

    static let memory = StoreFactory(name: "in-memory") { body in try await body(InMemoryStore()) }
    static let postgres = StoreFactory(name: "postgres") { body in
        try await TestDatabase.withStore { store, _ in try await body(store) }
    }

    /// Postgres is included whenever a test server is configured (always under scripts/test and CI).
    static var all: [StoreFactory] { TestDatabase.isConfigured ? [memory, postgres] : [memory] }
}

import Testing
