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

/// One regression test per defect of the reviewed single-process design (docs/design.md's table).
@Suite(
    "Defect regressions", .enabled(if: TestDatabase.isConfigured, "needs the test Postgres (scripts/test)"),
    .timeLimit(.minutes(3)))
struct DefectRegressionTests {
    /// #1: hibernation must stop every task and timer of the handler and free its memory.
    /// Hibernation is triggered exactly as the idle sweep does it (`hibernateNow`), once the timer's
    /// task is seen running; that the sweep itself triggers it is test #5's job.
    @Test func hibernationStopsEveryTask() async throws {
        try await Harness.withPostgres(replicas: 1, idle: nil) { coordinators, store in
            let coordinator = coordinators[0]
            // A handler with a live step-less wait (approval) and one with a distant durable timer.
            let waiting = try await coordinator.start(
                workflow: "approval", startEvent: ["request": "x"], handlerID: "hib-a")
            let timed = try await coordinator.start(
                workflow: "timer", startEvent: ["seconds": 3600], handlerID: "hib-t")
            weak let approvalRuntime: HandlerRuntime? = coordinator.runtime(of: waiting.id)
            weak let timerRuntime: HandlerRuntime? = coordinator.runtime(of: timed.id)
            #expect(approvalRuntime != nil && timerRuntime != nil)
            // The start event is processed asynchronously: wait for the timer's task and the
            // checkpointer to be running (they stay so: the timer is an hour away).
            try #require(await eventually { (timerRuntime?.liveTasks ?? 0) >= 2 && timerRuntime?.idleSince != nil })
            try #require(await eventually { approvalRuntime?.idleSince != nil })
            await coordinator.hibernateNow(waiting.id)
            await coordinator.hibernateNow(timed.id)
            #expect(try await store.handler(waiting.id)?.hibernated == true)
            #expect(try await store.handler(timed.id)?.hibernated == true)
            #expect(coordinator.liveHandlerIDs.isEmpty)
            // Nothing of either handler is left: no runtime object, hence no task, timer or buffer.
            try #require(await eventually { approvalRuntime == nil && timerRuntime == nil })
            let record = try #require(try await store.handler(timed.id))
            #expect(record.owner == nil)
            #expect(record.wakeAt != nil)
        }
    }

    /// #2: a stream reader must not keep an idle handler in memory.
    @Test func streamReaderDoesNotPinIdleHandler() async throws {
        try await Harness.withPostgres(replicas: 1, idle: .milliseconds(150)) { coordinators, store in
            let coordinator = coordinators[0]
            let record = try await coordinator.start(
                workflow: "approval", startEvent: ["request": "x"], handlerID: "pin")
            let seen = SeenTypes()
            try await withThrowingTaskGroup(of: Void.self) { group in
                // A reader tailing the log exactly as GET /events does (store + signals, never the runtime).
                group.addTask {
                    var cursor: Int64 = -1
                    while !Task.isCancelled {
                        let version = store.signals.logVersion(record.id.rawValue)
                        for event in try await store.events(record.id, after: cursor, limit: 100) {
                            cursor = event.sequence
                            seen.append(event.type)
                        }
                        await store.signals.waitForLogChange(record.id.rawValue, since: version, timeout: .seconds(1))
                    }
                }
                let hibernated = try await eventually { try await store.handler(record.id)?.hibernated ?? false }
                #expect(hibernated)
                // The runtime leaves memory right after the hibernate transaction commits.
                let unpinned = await eventually { coordinator.liveHandlerIDs.isEmpty }
                #expect(unpinned)
                // The reader may lag behind the commit it is woken for: wait for what it must see.
                #expect(await eventually { seen.all.contains("InputRequiredEvent") })
                // The reader still gets the rest after a reload.
                try await coordinator.send(
                    AnyEvent(type: "HumanResponseEvent", value: ["response": "y"]), to: record.id)
                let ended = await eventually { seen.all.last == "StopEvent" }
                #expect(ended)
                group.cancelAll()
            }
        }
    }

    /// #3: events fired at the moment of hibernation are never lost.
    @Test func eventRacingHibernationIsNotLost() async throws {
        let rounds = 40
        try await Harness.withPostgres(replicas: 2, idle: .milliseconds(20)) { coordinators, store in
            let record = try await coordinators[0].start(
                workflow: "accumulate", startEvent: ["count": .int(rounds)], handlerID: "race")
            var expected = 0
            var generator = SystemRandomNumberGenerator()
            for round in 0..<rounds {
                // Wait about the idle timeout (sometimes less, sometimes more), then send through
                // either replica: the event lands just before, during or after hibernation.
                let pause = Int.random(in: 0...40, using: &generator)
                try await Task.sleep(for: .milliseconds(pause))
                let value = round + 1
                expected += value
                do {
                    try await coordinators[round % 2].send(
                        AnyEvent(type: "Add", value: ["value": .int(value)]), to: record.id, eventID: "add-\(round)")
                } catch {
                    // Seen once under heavy load ("already finished" before the last send): keep
                    // the evidence of which event was counted twice, and by which owner.
                    let log = try await store.events(record.id, after: -1, limit: 100_000)
                    let history = try await store.leaseHistory(record.id)
                    Issue.record(
                        """
                        send \(round) failed: \(error)
                        applied Adds: \(log.filter { $0.type == "Add" }.compactMap { $0.value["value"]?.intValue })
                        lease history: \(history.map { "\($0.kind.rawValue) \($0.replica?.rawValue ?? "-") \($0.token.rawValue)" })
                        """)
                    throw error
                }
            }
            let finished = try #require(try await Harness.waitFinished(store, record.id))
            #expect(finished.status == .completed)
            #expect(finished.result?.value["result"] == .int(expected))
            let log = try await store.events(record.id, after: -1, limit: 100_000)
            #expect(log.map(\.sequence) == Array(0..<Int64(log.count)))
            let adds = log.filter { $0.type == "Add" }.compactMap { $0.value["value"]?.intValue }
            #expect(adds.sorted() == Array(1...rounds))
        }
    }

    /// #4: many concurrent events to one hibernated handler through three replicas: one claim,
    /// one live copy, contiguous sequences.
    @Test func concurrentReloadsMakeOneLiveCopy() async throws {
        let events = 30
        try await Harness.withPostgres(replicas: 3, idle: .seconds(30)) { coordinators, store in
            let record = try await coordinators[0].start(
                workflow: "accumulate", startEvent: ["count": .int(events)], handlerID: "reload")
            // Hibernate it now, exactly as the idle sweep would.
            try #require(await eventually { coordinators[0].runtime(of: record.id)?.idleSince != nil })
            await coordinators[0].hibernateNow(record.id)
            let before = try #require(try await store.handler(record.id))
            #expect(before.hibernated)

            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<events {
                    group.addTask {
                        try await coordinators[index % 3].send(
                            AnyEvent(type: "Add", value: ["value": 1]), to: record.id, eventID: "e\(index)")
                    }
                }
                try await group.waitForAll()
            }
            let finished = try #require(try await Harness.waitFinished(store, record.id))
            #expect(finished.result?.value["result"] == .int(events))
            // Exactly one reload after hibernation, however many replicas raced for it. (A lease
            // that lapsed on a starved machine may be claimed again later — a failover, not a
            // second reload — so the token is not required to rise by exactly one.)
            let reloads = try await store.leaseHistory(record.id).filter { $0.kind == .reloaded }
            #expect(reloads.count == 1)
            let log = try await store.events(record.id, after: -1, limit: 100_000)
            #expect(log.map(\.sequence) == Array(0..<Int64(log.count)))
            #expect(log.filter { $0.type == "Add" }.count == events)
        }
    }

    /// #5: the idle timeout is configurable, and `off` disables hibernation.
    @Test func idleTimeoutIsConfigurableAndOff() async throws {
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

final class SeenTypes: Sendable {
    private let types = Mutex<[String]>([])
    func append(_ type: String) { types.withLock { $0.append(type) } }
    var all: [String] { types.withLock { $0 } }
}

/// Delivery that does not depend on one notification (reconciled delivery).
@Suite("Reconciled delivery", .enabled(if: TestDatabase.isConfigured, "needs the test Postgres (scripts/test)"))
struct ReconciledDeliveryTests {
    /// An event accepted into the inbox whose NOTIFY never arrived (a LISTEN connection that was
    /// reconnecting or half-open) reaches the live handler by the periodic reconciliation, with
    /// hibernation off so that no idle sweep can stand in for it.
    @Test func eventWithLostNotificationIsApplied() async throws {
        try await TestDatabase.withStore { store, url in
            try await Harness.withCoordinators([store], idle: nil, ttl: .seconds(3)) { coordinators in
                let coordinator = coordinators[0]
                let record = try await coordinator.start(
                    workflow: "approval", startEvent: ["request": "x"], handlerID: "lost-notify")
                try #require(await eventually { coordinator.runtime(of: record.id)?.idleSince != nil })
                let before = coordinator.signals.count(.reconcile)
                // The answer as another replica's append writes it, minus its NOTIFY.
                let id = record.id.rawValue
                let event = #"{"type": "HumanResponseEvent", "value": {"response": "yes"}}"#
                _ = try await TestDatabase.withClient(url) { client in
                    try await client.query(
                        "INSERT INTO inbox (handler_id, event_id, event) VALUES (\(id), 'answer', \(event)::jsonb)",
                        logger: Harness.logger)
                }
                let finished = try #require(try await Harness.waitFinished(store, record.id, timeout: .seconds(20)))
                #expect(finished.status == .completed)
                #expect(finished.result?.value["result"]?["response"] == "yes")
                #expect(coordinator.signals.count(.reconcile) > before)
            }
        }
    }
}

/// A second process started with a replica id already in use.
@Suite("Duplicate replica id", .enabled(if: TestDatabase.isConfigured, "needs the test Postgres (scripts/test)"))
struct DuplicateReplicaIDTests {
    /// The newest process wins: the older one stops its handlers and ends with `replicaIDTaken`
    /// at its next renewal, instead of both releasing each other's leases forever; the handler
    /// moves to the newer process and completes there.
    @Test func olderProcessStepsDown() async throws {
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
}

/// D7: the database's clock and the replica's monotonic clock disagree.
@Suite("Clock steps", .enabled(if: TestDatabase.isConfigured, "needs the test Postgres (scripts/test)"))
struct ClockStepTests {
    /// The database clock jumps 10 s forward (beyond the margin of TTL/5): leases judged by the
    /// database now expire early, so the replica fences every handler at once and registers anew;
    /// the handler is claimed again under a new token and still completes. One step is one
    /// detection (the comparison starts over from the stepped clock).
    @Test func databaseClockStepFencesAndReregisters() async throws {
        try await TestDatabase.withStore { postgres, _ in
            let store = DelayedRenewalStore(postgres)
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
}

/// D4 and D6: what happens around a write whose outcome is slow or unknown.
// A time limit (cancellation) turns a hang into a failure that names its test: in one session's
// loops a run of these suites with the database-history tests stalled twice (2026-12-07), and
// buffered output could not say which test it was.
@Suite(
    "Writes in doubt", .enabled(if: TestDatabase.isConfigured, "needs the test Postgres (scripts/test)"),
    .timeLimit(.minutes(3)))
struct WritesInDoubtTests {
    /// D4: once the event is durable in the inbox, `send` succeeds whatever happens next; here the
    /// reload of the hibernated handler fails (its claim throws), and the claim sweep applies the
    /// event later. A failed send would invite a retry that adds the event twice. The append that
    /// would claim answers busy (as with its row held), so the event is appended without a claim
    /// and the reload that follows is a separate claim: the one that fails.
    @Test func sendSucceedsOnceDurableEvenWhenTheReloadFails() async throws {
        try await TestDatabase.withStore { postgres, _ in
            let store = DelayedRenewalStore(postgres)
            try await Harness.withCoordinators([store], idle: .milliseconds(200), ttl: .seconds(3)) { coordinators in
                let coordinator = coordinators[0]
                let record = try await coordinator.start(
                    workflow: "approval", startEvent: ["request": "x"], handlerID: "durable-send")
                let hibernated = try await eventually(timeout: .seconds(20)) {
                    try await postgres.handler(record.id)?.hibernated == true
                }
                try #require(hibernated)
                store.busyNextClaimingAppends(1)
                store.failNextClaims(1)
                try await coordinator.send(
                    AnyEvent(type: "HumanResponseEvent", value: ["response": "yes"]), to: record.id)
                // The reload after the durable append met the injected failure (the send went on).
                #expect(store.claimsStillToFail == 0)
                let finished = try #require(try await Harness.waitFinished(postgres, record.id, timeout: .seconds(20)))
                #expect(finished.status == .completed)
                #expect(finished.result?.value["result"]?["response"] == "yes")
                let inbox = try await postgres.client.query(
                    "SELECT count(*) FROM inbox WHERE handler_id = 'durable-send' AND event_id <> 'start'",
                    logger: Harness.logger)
                var answers: Int64 = -1
                for try await count in inbox.decode(Int64.self) { answers = count }
                #expect(answers == 1)
            }
        }
    }

    /// [pg-ha] A checkpoint whose commit happened but whose answer was lost (as when a database
    /// failover kills the connection after COMMIT): the replica neither assumes it failed nor
    /// writes it twice. Its retry finds its own sequences already written, reads the handler, and
    /// goes on; the log has every tick exactly once.
    @Test func checkpointWhoseAnswerWasLostIsNotWrittenTwice() async throws {
        try await TestDatabase.withStore { postgres, _ in
            let store = DelayedRenewalStore(postgres)
            try await Harness.withCoordinators([store], idle: nil, ttl: .seconds(5)) { coordinators in
                store.loseCheckpointAnswers()
                let record = try await coordinators[0].start(
                    workflow: "counter", startEvent: ["count_to": 20, "tick_ms": 5], handlerID: "lost-answer")
                let finished = try #require(try await Harness.waitFinished(postgres, record.id))
                #expect(finished.status == .completed)
                let log = try await postgres.events(record.id, after: -1, limit: 1000)
                #expect(log.map(\.sequence) == Array(0..<Int64(log.count)))
                #expect(log.filter { $0.type == "Tick" }.compactMap { $0.value["n"]?.intValue } == Array(1...20))
                // The answers really were lost, and the handler never changed hands.
                #expect(store.answersStillToLose == 0)
                #expect(coordinators[0].fenceCounts.rejectedWrites == 0)
                #expect(try await postgres.leaseHistory(record.id).map(\.kind) == [.created, .finished])
            }
        }
    }

    /// Renewals whose requests never return (a partition killed their connections; seen in the
    /// randomized fault run) must not stop the later ones: the replica renews again, and stays
    /// ready, once its database answers. Before the fix three such renewals blocked every later
    /// one for good.
    @Test func renewalsThatNeverReturnDoNotStopLaterOnes() async throws {
        try await TestDatabase.withStore { postgres, _ in
            let store = DelayedRenewalStore(postgres)
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
    @Test func stuckWriteIsFencedLocallyAndTheHandlerMoves() async throws {
        try await TestDatabase.withStore { postgres, _ in
            let stuckStore = DelayedRenewalStore(postgres)
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
