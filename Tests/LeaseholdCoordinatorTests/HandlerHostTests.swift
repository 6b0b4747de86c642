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

/// The live handlers of one replica (`HandlerHost`): hibernation stops every task, a reader does not
/// pin an idle handler, an event racing a hibernation or a lost notification still arrives, and
/// concurrent reloads make one live copy.
@Suite(
    "Handler host", .enabled(if: TestDatabase.isConfigured, "needs the test Postgres (scripts/test)"),
    .timeLimit(.minutes(3)))
struct HandlerHostTests {
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

final class SeenTypes: Sendable {
    private let types = Mutex<[String]>([])
    func append(_ type: String) { types.withLock { $0.append(type) } }
    var all: [String] { types.withLock { $0 } }
}
