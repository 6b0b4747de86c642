import Foundation
import LeaseholdEngine
import LeaseholdRuntime
import LeaseholdStore
import LeaseholdTestSupport
import Testing

@testable import LeaseholdCoordinator

/// The replica's time-driven decisions (self-fencing, idle hibernation, renewal deadlines) on a
/// manual clock: each test moves time by hand and runs one pass of the part it tests, so the
/// outcome does not depend on how fast the machine is.
@Suite("Leases and idleness on a manual clock")
struct ManualClockTests {
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

    @Test("self-fencing happens exactly when the last renewal is too old, and a renewal moves that point")
    func selfFencingDeadline() async throws {
        try await Self.withParts(idle: nil) { coordinator, clock, _ in
            let record = try await coordinator.start(
                workflow: "approval", startEvent: ["request": "x"], handlerID: "sf")
            let limit = coordinator.configuration.selfFenceAfter
            clock.advance(by: limit - .milliseconds(1))
            #expect(!coordinator.selfFenceIfNeeded())
            // A renewal sent now proves the leases for another full period.
            await coordinator.heartbeatOnce()
            clock.advance(by: limit - .milliseconds(1))
            #expect(!coordinator.selfFenceIfNeeded())
            #expect(coordinator.liveHandlerIDs == [record.id])
            #expect(
                coordinator.keeper.mayWrite(Lease(handlerID: record.id, replicaID: "r1", token: record.fencingToken)))
            clock.advance(by: .milliseconds(1))
            #expect(
                !coordinator.keeper.mayWrite(Lease(handlerID: record.id, replicaID: "r1", token: record.fencingToken)))
            #expect(coordinator.selfFenceIfNeeded())
            #expect(coordinator.liveHandlerIDs.isEmpty)
            #expect(coordinator.fenceCounts.selfFences == 1)
            // Nothing is left to fence: a second pass changes nothing.
            #expect(!coordinator.selfFenceIfNeeded())
            #expect(coordinator.fenceCounts.selfFences == 1)
        }
    }

    @Test(
        "the idle sweep hibernates a waiting handler after the timeout, not before, and never one with a timer due sooner"
    )
    func idleSweep() async throws {
        try await Self.withParts(idle: .seconds(30)) { coordinator, clock, store in
            let waiting = try await coordinator.start(
                workflow: "approval", startEvent: ["request": "x"], handlerID: "idle")
            // Due 45 s after start: at the 30 s timeout it is 15 s away, sooner than the timeout.
            let timed = try await coordinator.start(workflow: "timer", startEvent: ["seconds": 45], handlerID: "soon")
            // The start events are applied asynchronously; idleness begins once they are.
            try #require(await eventually { coordinator.runtime(of: waiting.id)?.idleSince != nil })
            try #require(await eventually { coordinator.runtime(of: timed.id)?.idleSince != nil })
            clock.advance(by: .seconds(30) - .milliseconds(1))
            #expect(coordinator.sweepIdle().isEmpty)
            clock.advance(by: .milliseconds(1))
            // The timer is due within the timeout: it stays.
            #expect(coordinator.sweepIdle() == [waiting.id])
            await coordinator.hibernateNow(waiting.id)  // returns once it has left memory
            #expect(coordinator.liveHandlerIDs == [timed.id])
            #expect(try await store.handler(waiting.id)?.hibernated == true)
            #expect(try await store.handler(timed.id)?.hibernated == false)
        }
    }

    @Test("readiness follows the last renewal by the monotonic clock")
    func readiness() async throws {
        try await Self.withParts(idle: nil, ttl: .seconds(6)) { coordinator, clock, _ in
            #expect(coordinator.isReady)
            clock.advance(by: .seconds(6))
            #expect(!coordinator.isReady)
            await coordinator.heartbeatOnce()
            #expect(coordinator.isReady)
        }
    }
}
