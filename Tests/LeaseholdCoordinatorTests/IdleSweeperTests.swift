import Foundation
import LeaseholdEngine
import LeaseholdPostgres
import LeaseholdRuntime
import LeaseholdStore
import LeaseholdTestSupport
import PostgresNIO
import Synchronization
import Testing

@testable import LeaseholdCoordinator

/// The hibernation policy (`IdleSweeper`): an idle handler is hibernated after the idle timeout and
/// not before, a waiting step keeps it live, and the timeout can be set or turned off.
@Suite("Idle sweeper")
struct IdleSweeperTests {
    @Test(
        "the idle sweep hibernates a waiting handler after the timeout, not before, and never one with a timer due sooner"
    )
    func idleSweep() async throws {
        try await ManualClockHarness.withParts(idle: .seconds(30)) { coordinator, clock, store in
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

    /// #5: the idle timeout is configurable, and `off` disables hibernation.
    @Test(.enabled(if: TestDatabase.isConfigured, "needs the test Postgres (scripts/test)"))
    func idleTimeoutIsConfigurableAndOff() async throws {
        try await Harness.withPostgres(replicas: 1, idle: nil) { coordinators, store in
            let record = try await coordinators[0].start(
                workflow: "approval", startEvent: ["request": "x"], handlerID: "off")
            // With `off` there is no idle sweep at all: nothing can hibernate the waiting handler.
            try #require(await eventually { coordinators[0].runtime(of: record.id)?.idleSince != nil })
            #expect(coordinators[0].sweeper == nil)
            #expect(coordinators[0].sweepIdle().isEmpty)
            #expect(try await store.handler(record.id)?.hibernated == false)
            #expect(coordinators[0].liveHandlerIDs == [record.id])
        }
        try await Harness.withPostgres(replicas: 1, idle: .milliseconds(150)) { coordinators, store in
            let started = ContinuousClock.now
            let record = try await coordinators[0].start(
                workflow: "approval", startEvent: ["request": "x"], handlerID: "on")
            let hibernated = try await eventually { try await store.handler(record.id)?.hibernated ?? false }
            #expect(hibernated)
            #expect(ContinuousClock.now - started >= .milliseconds(150))
        }
    }
}
