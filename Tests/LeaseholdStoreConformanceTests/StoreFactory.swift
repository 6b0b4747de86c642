import LeaseholdPostgres
import LeaseholdStore
import LeaseholdTestSupport
import Testing

/// A way to get a fresh store; every store implementation adds one and passes the same suite.
struct StoreFactory: Sendable, CustomTestStringConvertible {
    let name: String
    let run: @Sendable (@Sendable (any HandlerStore) async throws -> Void) async throws -> Void

    var testDescription: String { name }

    static let memory = StoreFactory(name: "in-memory") { body in try await body(registered(InMemoryStore())) }
    static let postgres = StoreFactory(name: "postgres") { body in
        try await TestDatabase.withStore { store, _ in try await body(registered(store)) }
    }

    /// Leases are anchored to a replica's registration: the suite's replicas r1 and r2 start
    /// registered for a minute (a test that needs a lapse registers one anew, shorter).
    static func registered(_ store: any HandlerStore) async throws -> any HandlerStore {
        for replica in [StoreConformanceTests.r1, StoreConformanceTests.r2] {
            try await store.register(replica, address: "test://\(replica)", ttl: .seconds(60))
        }
        return store
    }

    /// Postgres is included whenever a test server is configured (always under scripts/test and CI).
    static var all: [StoreFactory] { TestDatabase.isConfigured ? [memory, postgres] : [memory] }
}
