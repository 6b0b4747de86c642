import Foundation
import LeaseholdCoordinator
import LeaseholdEngine
import LeaseholdPostgres
import LeaseholdSamples
import LeaseholdStore
import LeaseholdTestSupport
import Logging
import Testing

/// A test workflow: external `Add` events, each applied once; stops after `count` of them with the sum.
enum TestWorkflows {
    static let add = EventType("Add", fields: [FieldSpec("value", .integer)])

    static func accumulate() throws -> Workflow {
        try Workflow(
            name: "accumulate", start: [FieldSpec("count", .integer(minimum: 1))], external: [add],
            steps: [
                Step("begin", accepts: ["StartEvent"]) { event, context in
                    context.set("count", event.value["count"] ?? 1)
                    context.set("seen", 0)
                    context.set("sum", 0)
                },
                Step("add", accepts: ["Add"], emits: ["StopEvent"], streams: ["Add"], maxConcurrency: 1) {
                    event, context in
                    let seen = (context.get("seen")?.intValue ?? 0) + 1
                    let sum = (context.get("sum")?.intValue ?? 0) + (event.value["value"]?.intValue ?? 0)
                    context.set("seen", .int(seen))
                    context.set("sum", .int(sum))
                    context.write(event)
                    if seen >= (context.get("count")?.intValue ?? 1) { context.stop(.int(sum)) }
                },
            ])
    }

    static func registry(ledger: any FencedLedger = InMemoryLedger()) throws -> WorkflowRegistry {
        var registry = try Samples.registry(ledger: ledger)
        try registry.register(try accumulate())
        return registry
    }
}

enum Harness {
    static var logger: Logger {
        var logger = Logger(label: "coordinator-test")
        logger.logLevel = .warning
        return logger
    }

    static func configuration(_ id: String, ttl: Duration = .seconds(5), idle: Duration?) -> CoordinatorConfiguration {
        CoordinatorConfiguration(replicaID: ReplicaID(id), address: "test://\(id)", leaseTTL: ttl, idleTimeout: idle)
    }

    /// Runs coordinators (each a service in the group) over the given stores, then cancels them.
    static func withCoordinators<T: Sendable>(
        _ stores: [any HandlerStore], idle: Duration?, ttl: Duration = .seconds(5),
        ledger: any FencedLedger = InMemoryLedger(),
        _ body: @Sendable ([Coordinator]) async throws -> T
    ) async throws -> T {
        let registry = try TestWorkflows.registry(ledger: ledger)
        let coordinators = stores.enumerated().map { index, store in
            Coordinator(
                store: store, registry: registry, configuration: configuration("r\(index + 1)", ttl: ttl, idle: idle),
                logger: logger)
        }
        return try await withThrowingTaskGroup(of: T?.self) { group in
            for coordinator in coordinators {
                group.addTask {
                    try await coordinator.run()
                    return nil
                }
            }
            defer { group.cancelAll() }
            for coordinator in coordinators {
                try #require(await eventually { coordinator.isReady })
            }
            return try await body(coordinators)
        }
    }

    /// Postgres: `count` stores (own LISTEN connection each) over one fresh database.
    static func withPostgres<T: Sendable>(
        replicas count: Int, idle: Duration?, ttl: Duration = .seconds(5),
        _ body: @Sendable ([Coordinator], PostgresStore) async throws -> T
    ) async throws -> T {
        try await TestDatabase.withStore { first, _ in
            let others = (1..<max(1, count)).map { _ in
                PostgresStore(client: first.client, logger: logger, groupCommit: .standard)
            }
            return try await withThrowingTaskGroup(of: T?.self) { group in
                for store in others {
                    group.addTask {
                        try await store.run()
                        return nil
                    }
                }
                defer { group.cancelAll() }
                return try await withCoordinators([first] + others, idle: idle, ttl: ttl) { coordinators in
                    try await body(coordinators, first)
                }
            }
        }
    }

    static func waitFinished(_ store: any HandlerStore, _ id: HandlerID, timeout: Duration = .seconds(20)) async throws
        -> HandlerRecord?
    {
        var finished: HandlerRecord?
        _ = try await eventually(timeout: timeout) {
            finished = try await store.handler(id).flatMap { $0.status.isFinished ? $0 : nil }
            return finished != nil
        }
        return finished
    }
}

extension Coordinator {
    /// `fenceCounts.selfFences` as a plain value (a tuple read inside an `eventually` closure
    /// crashes the Swift 6.3.1 compiler's SendNonSendable pass).
    var selfFences: Int { fenceCounts.selfFences }

    /// Waits until this replica has stopped its handlers itself at least once (the count never
    /// goes down). A plain loop: the equivalent `eventually` closure crashes the 6.3.1 compiler.
    func awaitSelfFence(timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if fenceCounts.selfFences >= 1 { return true }
            do { try await Task.sleep(for: .milliseconds(10)) } catch { return false }
        }
        return fenceCounts.selfFences >= 1
    }
}
