import Foundation
import LeaseholdEngine
import LeaseholdKit
import LeaseholdPostgres
import LeaseholdRuntime
import LeaseholdStore
import LeaseholdTestSupport
import PostgresNIO
import Synchronization
import Testing

@testable import LeaseholdCoordinator

/// One registered coordinator over the in-memory store whose handlers run, but none of whose loops
/// do, on a manual clock: a test moves time by hand and runs one pass of the part it tests, so the
/// outcome does not depend on how fast the machine is.
enum ManualClockHarness {
    /// One registered coordinator over the in-memory store whose handlers run, but none of whose
    /// loops do: the test drives each pass itself.
    static func withParts<T: Sendable>(
        idle: Duration?, ttl: Duration = .seconds(6),
        _ body: @Sendable (Coordinator, ManualClock, InMemoryStore) async throws -> T
    ) async throws -> T {
        let clock = ManualClock()
        let store = InMemoryStore()
        let coordinator = Coordinator(
            store: store, registry: try TestWorkflows.registry(),
            configuration: Harness.configuration("r1", ttl: ttl, idle: idle), logger: Harness.logger,
            // Wall time moves with the manual clock too, so durable timers and the sweep agree.
            clock: ReplicaClock(clock, wall: { Date(timeIntervalSince1970: 1_800_000_000 + clock.now.offset.seconds) }))
        try await coordinator.keeper.register()
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await coordinator.host.runAll() }
            let result: T
            do {
                result = try await body(coordinator, clock, store)
            } catch {
                coordinator.host.beginHandoff()
                throw error
            }
            coordinator.host.beginHandoff()
            try await group.waitForAll()
            return result
        }
    }
}
