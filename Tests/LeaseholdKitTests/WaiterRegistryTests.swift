import LeaseholdKit
import Testing

/// The one waiter registry: no wake-up is missed between a waiter's check and its parking, a
/// wake for one key leaves the others parked, and cancellation ends a wait.
@Suite("Waiter registry", .timeLimit(.minutes(1)))
struct WaiterRegistryTests {

    /// Until `count` tasks are parked (a state the registry cannot signal: yielded for, bounded).
    static func parked(_ registry: WaiterRegistry<String>, _ count: Int) async -> Bool {
        for _ in 0..<100_000 {
            if registry.count == count { return true }
            await Task.yield()
        }
        return registry.count == count
    }

    @Test func aConditionThatAlreadyHoldsDoesNotWait() async {
        let registry = WaiterRegistry<String>()
        await registry.wait(for: "a") { true }
        #expect(registry.count == 0)
    }

    @Test func aWakeForAnotherKeyLeavesTheWaiterParked() async throws {
        let registry = WaiterRegistry<String>()
        let flag = OnceFlag()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await registry.wait(for: "a") { flag.isSet } }
            try #require(await Self.parked(registry, 1))
            registry.wake("b")
            flag.set()
            registry.wake("b")
            #expect(registry.count == 1)
            registry.wake("a")
            try await group.waitForAll()
            #expect(registry.count == 0)
        }
    }

    /// Each round: the condition is made true and the key woken by one task while another starts
    /// waiting; every waiter returns (a missed wake-up would leave one parked until the limit).
    @Test func noWakeUpIsMissedBetweenTheCheckAndTheWait() async {
        let registry = WaiterRegistry<String>()
        for round in 0..<2_000 {
            let ready = OnceFlag()
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await registry.wait(for: "k") { ready.isSet } }
                group.addTask {
                    if round % 2 == 0 { await Task.yield() }
                    ready.set()
                    registry.wake("k")
                }
            }
        }
        #expect(registry.count == 0)
    }

    @Test func aCancelledWaiterReturns() async throws {
        let registry = WaiterRegistry<String>()
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await registry.wait(for: "a") { false } }
            #expect(await Self.parked(registry, 1))
            group.cancelAll()
        }
        #expect(registry.count == 0)
    }
}
