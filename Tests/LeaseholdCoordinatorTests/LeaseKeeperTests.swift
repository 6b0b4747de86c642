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

/// The lease keeper: self-fencing by the monotonic clock, readiness, a duplicate replica id, a
/// stepped database clock, renewals racing creations, renewals and writes that never return.
@Suite("Lease keeper", .timeLimit(.minutes(3)))
struct LeaseKeeperTests {
    @Test("self-fencing happens exactly when the last renewal is too old, and a renewal moves that point")
    func selfFencingDeadline() async throws {
        try await ManualClockHarness.withParts(idle: nil) { coordinator, clock, _ in
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

    @Test("readiness follows the last renewal by the monotonic clock")
    func readiness() async throws {
        try await ManualClockHarness.withParts(idle: nil, ttl: .seconds(6)) { coordinator, clock, _ in
            #expect(coordinator.isReady)
            clock.advance(by: .seconds(6))
            #expect(!coordinator.isReady)
            await coordinator.heartbeatOnce()
            #expect(coordinator.isReady)
        }
    }

    /// The newest process wins: the older one stops its handlers and ends with `replicaIDTaken`
    /// at its next renewal, instead of both releasing each other's leases forever; the handler
    /// moves to the newer process and completes there.
    @Test(.enabled(if: TestDatabase.isConfigured, "needs the test Postgres (scripts/test)"))
    func olderProcessStepsDown() async throws {
        try await TestDatabase.withStore { store, _ in
            let registry = try TestWorkflows.registry()
            let configuration = Harness.configuration("r1", ttl: .seconds(3), idle: nil)
            let older = Coordinator(
                store: store, registry: registry, configuration: configuration, logger: Harness.logger)
            let newerStore = PostgresStore(client: store.client, logger: Harness.logger)
            let newer = Coordinator(
                store: newerStore, registry: registry, configuration: configuration, logger: Harness.logger)
            try await withThrowingTaskGroup(of: Void.self) { group in
                let ended = Mutex<String?>(nil)
                group.addTask {
                    do {
                        try await older.run()
                        ended.withLock { $0 = "returned" }
                    } catch {
                        ended.withLock { $0 = "\(error)" }
                    }
                }
                try #require(await eventually { older.isReady })
                let record = try await older.start(workflow: "approval", startEvent: ["request": "x"], handlerID: "dup")
                group.addTask { try await newerStore.run() }
                group.addTask { try await newer.run() }
                // The older one notices at its next renewal (every TTL/3 = 1 s).
                try #require(await eventually(timeout: .seconds(20)) { ended.withLock { $0 } != nil })
                #expect(ended.withLock { $0 } == "\(CoordinatorError.replicaIDTaken("r1"))")
                #expect(older.liveHandlerIDs.isEmpty)
                // The newer process claims the handler (its lease was voided) and applies the answer.
                try await newer.send(AnyEvent(type: "HumanResponseEvent", value: ["response": "yes"]), to: record.id)
                let finished = try #require(try await Harness.waitFinished(store, record.id, timeout: .seconds(20)))
                #expect(finished.status == .completed)
                #expect(finished.fencingToken > record.fencingToken)
                group.cancelAll()
            }
        }
    }

    /// The database clock jumps 10 s forward (beyond the margin of TTL/5): leases judged by the
    /// database now expire early, so the replica fences every handler at once and registers anew;
    /// the handler is claimed again under a new token and still completes. One step is one
    /// detection (the comparison starts over from the stepped clock).
    @Test(.enabled(if: TestDatabase.isConfigured, "needs the test Postgres (scripts/test)"))
    func databaseClockStepFencesAndReregisters() async throws {
        try await TestDatabase.withStore { postgres, _ in
            let store = FaultyStore(postgres)
            try await Harness.withCoordinators([store], idle: nil, ttl: .seconds(3)) { coordinators in
                let coordinator = coordinators[0]
                let record = try await coordinator.start(
                    workflow: "approval", startEvent: ["request": "x"], handlerID: "clock-step")
                try #require(await eventually { coordinator.runtime(of: record.id)?.idleSince != nil })
                await coordinator.heartbeatOnce()
                #expect(coordinator.clockSteps == 0)
                store.stepDatabaseClock(by: 10)
                await coordinator.heartbeatOnce()
                #expect(coordinator.clockSteps == 1)
                let first = record.fencingToken
                let moved = try await eventually(timeout: .seconds(20)) {
                    try await Self.token(postgres, "clock-step") > first
                }
                #expect(moved)
                try await coordinator.send(
                    AnyEvent(type: "HumanResponseEvent", value: ["response": "yes"]), to: record.id)
                let finished = try #require(try await Harness.waitFinished(postgres, record.id, timeout: .seconds(20)))
                #expect(finished.status == .completed)
                await coordinator.heartbeatOnce()
                // One step, one detection. (Self-fences are not compared: on a loaded machine a
                // renewal may come late and fence for its own reason, which is not what this pins.)
                #expect(coordinator.clockSteps == 1)
            }
        }
    }

    static func token(_ store: PostgresStore, _ id: HandlerID) async throws -> FencingToken {
        try await store.handler(id)?.fencingToken ?? FencingToken(0)
    }

    @Test(
        "a handler created while a renewal's answer is on its way keeps running and keeps its lease",
        .enabled(if: TestDatabase.isConfigured, "needs the test Postgres (scripts/test)"))
    func handlerCreatedDuringRenewalKeepsRunning() async throws {
        try await TestDatabase.withStore { postgres, _ in
            let store = FaultyStore(postgres)
            // TTL 60 s: the coordinator's own renewal loop (every 20 s) stays out of the way.
            try await Harness.withCoordinators([store], idle: nil, ttl: .seconds(60)) { coordinators in
                let coordinator = coordinators[0]
                try await withThrowingTaskGroup(of: Void.self) { group in
                    // The renewal runs in Postgres now; its answer reaches the coordinator later.
                    store.holdNextAnswer()
                    group.addTask { await coordinator.heartbeatOnce() }
                    try await store.waitUntilHeld()
                    let record = try await coordinator.start(
                        workflow: "approval", startEvent: ["request": "x"], handlerID: "during-renewal")
                    let runtime = try #require(coordinator.runtime(of: record.id))
                    store.deliverAnswer()
                    try await group.next()
                    await coordinator.heartbeatOnce()
                    // Not taken for lost (nor released as an orphan): the same runtime applies the
                    // answer under its first lease. Stopped, the handler would wait for a renewal
                    // to release its lease (20 s here) and a claim to raise the token.
                    try await coordinator.send(
                        AnyEvent(type: "HumanResponseEvent", value: ["response": "yes"]), to: record.id)
                    let finished = try #require(
                        try await Harness.waitFinished(postgres, record.id, timeout: .seconds(10)))
                    #expect(finished.status == .completed)
                    #expect(finished.fencingToken == record.fencingToken)  // never claimed again
                    #expect(runtime.state.status == .completed)
                }
            }
        }
    }

    /// Renewals whose requests never return (a partition killed their connections; seen in the
    /// randomized fault run) must not stop the later ones: the replica renews again, and stays
    /// ready, once its database answers. Before the fix three such renewals blocked every later
    /// one for good.
    @Test(.enabled(if: TestDatabase.isConfigured, "needs the test Postgres (scripts/test)"))
    func renewalsThatNeverReturnDoNotStopLaterOnes() async throws {
        try await TestDatabase.withStore { postgres, _ in
            let store = FaultyStore(postgres)
            try await Harness.withCoordinators([store], idle: nil, ttl: .seconds(1)) { coordinators in
                let coordinator = coordinators[0]
                store.hangNextRenewals(5)
                // Not current once the hung renewals outlast a TTL...
                let lapsed = await eventually(timeout: .seconds(20)) { !coordinator.isReady }
                #expect(lapsed)
                // ...and current again once later renewals go through (after the hung ones age
                // past two TTLs they no longer hold the way).
                let renewed = await eventually(timeout: .seconds(30)) { coordinator.isReady }
                #expect(renewed)
            }
        }
    }

    /// D6: a checkpoint that never returns (a dead connection that never errors) is stuck after
    /// TTL/2: the owner leaves that lease out of its renewals and stops the handler at once, so
    /// `POST /run`-style waiters read the store instead of a zombie entry; once the lease lapses
    /// the other replica claims the handler under a higher token and completes it.
    @Test(.enabled(if: TestDatabase.isConfigured, "needs the test Postgres (scripts/test)"))
    func stuckWriteIsFencedLocallyAndTheHandlerMoves() async throws {
        try await TestDatabase.withStore { postgres, _ in
            let stuckStore = FaultyStore(postgres)
            let other = PostgresStore(client: postgres.client, logger: Harness.logger)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await other.run() }
                defer { group.cancelAll() }
                // TTL 5 s: the handler must still be the owner's when its write gets stuck; at 2 s a
                // stall of a loaded machine (a CI run beside a CPU hog and a fault run, 2026-11-27)
                // let the lease lapse first, and the handler never went idle on the owner.
                try await Harness.withCoordinators([stuckStore, other], idle: nil, ttl: .seconds(5)) { coordinators in
                    let (owner, survivor) = (coordinators[0], coordinators[1])
                    let record = try await owner.start(
                        workflow: "approval", startEvent: ["request": "x"], handlerID: "stuck-write")
                    try #require(
                        await eventually(timeout: .seconds(30)) { owner.runtime(of: record.id)?.idleSince != nil })
                    stuckStore.hangCheckpoints(of: record.id)
                    try await survivor.send(
                        AnyEvent(type: "HumanResponseEvent", value: ["response": "yes"]), to: record.id)
                    // Stopped on the owner within a few renewal periods of the write getting stuck,
                    // counted as the replica stopping its handlers itself (a partition drill sees
                    // this or the renewal-age fence, whichever comes first; here renewals work, so
                    // only the stuck write can cause it). The count stays; "not live on the owner"
                    // lasts only until the lease lapses and is not asserted while it may pass.
                    let fenced = await owner.awaitSelfFence(timeout: .seconds(20))
                    #expect(fenced)
                    // Generous: alone this test took 5-31 s in five runs beside a CPU hog, and beside
                    // the whole suite the move took longer than 30 s once (2026-11-27; the spread is
                    // not explained yet, see the session note). The property is that it moves.
                    let finished = try #require(
                        try await Harness.waitFinished(postgres, record.id, timeout: .seconds(90)))
                    #expect(finished.status == .completed)
                    #expect(finished.fencingToken > record.fencingToken)
                    #expect(owner.runtime(of: record.id) == nil)
                }
            }
        }
    }
}
