import Foundation
import LeaseholdCoordinator
import LeaseholdEngine
import LeaseholdPostgres
import LeaseholdSamples
import LeaseholdStore
import LeaseholdTestSupport
import Testing

/// Nested workflows through real coordinators, on the in-memory store and on PostgreSQL (two
/// replicas): each child a handler of its own, started once, its end put in the parent's inbox by
/// its final commit; cancelling a parent cancels its children; a parent hibernates while waiting.
@Suite("Nested workflows through coordinators", .timeLimit(.minutes(1)))
struct NestedWorkflowCoordinatorTests {
    enum Backend: String, CaseIterable, Sendable { case memory, postgres }

    static func withCluster<T: Sendable>(
        _ backend: Backend, idle: Duration? = nil, _ body: @Sendable ([Coordinator], any HandlerStore) async throws -> T
    ) async throws -> T {
        switch backend {
        case .memory:
            let store = InMemoryStore()
            return try await Harness.withCoordinators([store], idle: idle) { try await body($0, store) }
        case .postgres:
            return try await Harness.withPostgres(replicas: 2, idle: idle) { try await body($0, $1) }
        }
    }

    /// Waits (on the store's log signal) until `id` has logged more than `count` records.
    static func awaitLog(_ store: any HandlerStore, _ id: HandlerID, beyond count: Int) async throws {
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            let version = store.signals.logVersion(id.rawValue)
            if try await store.events(id, after: -1, limit: count + 1).count > count { return }
            await store.signals.waitForLogChange(id.rawValue, since: version, timeout: .seconds(1))
        }
        Issue.record("\(id) did not log \(count + 1) records within 30 s")
    }

    static func children(of id: HandlerID, in store: any HandlerStore) async throws -> [HandlerRecord] {
        try await store.handlers(HandlerFilter(idPrefix: "\(id.rawValue)~")).sorted { $0.id.rawValue < $1.id.rawValue }
    }

    @Test("a parent runs its children one after another, each created once", arguments: Backend.allCases)
    func childrenRunOnce(_ backend: Backend) async throws {
        try await Self.withCluster(backend) { coordinators, store in
            let parent = try await coordinators[0].start(
                workflow: "nested", startEvent: ["children": 3, "count_to": 2], handlerID: "parent-\(backend)")
            let done = try await coordinators[0].awaitCompletion(parent.id)
            #expect(done.status == .completed)
            #expect(done.result?.value["result"] == ["total": 6])
            let children = try await Self.children(of: parent.id, in: store)
            #expect(
                children.map(\.id.rawValue) == [
                    "parent-\(backend)~0.1", "parent-\(backend)~0.2", "parent-\(backend)~0.3",
                ])
            for child in children {
                #expect(child.status == .completed)
                let created = try await store.leaseHistory(child.id).filter { $0.kind == .created }
                #expect(created.count == 1, "\(child.id) created \(created.count) times")
            }
        }
    }

    @Test("cancelling a parent cancels its running child", arguments: Backend.allCases)
    func cancelPropagates(_ backend: Backend) async throws {
        try await Self.withCluster(backend) { coordinators, store in
            let parent = try await coordinators[0].start(
                workflow: "nested", startEvent: ["children": 1, "count_to": 10_000, "tick_ms": 50],
                handlerID: "cancel-\(backend)")
            let child = HandlerID("cancel-\(backend)~0.1")
            // The child exists once its creation committed; its log grows as it ticks.
            try await Self.awaitLog(store, child, beyond: 2)
            #expect(try await coordinators[0].cancel(parent.id, purge: false))
            let ended = try await coordinators[0].awaitCompletion(child)
            #expect(ended.status == .cancelled)
            #expect(try await store.handler(parent.id)?.status == .cancelled)
        }
    }

    @Test("a child cancelled on its own fails its parent's step with the reason", arguments: Backend.allCases)
    func cancelledChild(_ backend: Backend) async throws {
        try await Self.withCluster(backend) { coordinators, store in
            let parent = try await coordinators[0].start(
                workflow: "nested", startEvent: ["children": 1, "count_to": 10_000, "tick_ms": 50],
                handlerID: "orphan-\(backend)")
            let child = HandlerID("orphan-\(backend)~0.1")
            try await Self.awaitLog(store, child, beyond: 2)
            #expect(try await coordinators[0].cancel(child, purge: false))
            let done = try await coordinators[0].awaitCompletion(parent.id)
            #expect(done.status == .failed)
            #expect(
                done.error?.contains("child workflow 'orphan-\(backend)~0.1' cancelled") == true, "\(done.error ?? "")")
        }
    }

    @Test("a parent waiting for its child hibernates, and is reloaded by the child's end", arguments: Backend.allCases)
    func parentHibernates(_ backend: Backend) async throws {
        try await Self.withCluster(backend, idle: .milliseconds(100)) { coordinators, store in
            let parent = try await coordinators[0].start(
                workflow: "nested", startEvent: ["children": 1, "count_to": 8, "tick_ms": 100],
                handlerID: "sleepy-\(backend)")
            let done = try await coordinators[0].awaitCompletion(parent.id)
            #expect(done.status == .completed)
            let kinds = try await store.leaseHistory(parent.id).map(\.kind)
            #expect(kinds.contains(.hibernated) && kinds.contains(.reloaded), "\(kinds)")
        }
    }

    @Test("a client cannot link a handler to a parent", arguments: Backend.allCases)
    func reservedField(_ backend: Backend) async throws {
        _ = try await Self.withCluster(backend) { coordinators, _ in
            await #expect(throws: EngineError.self) {
                _ = try await coordinators[0].start(
                    workflow: "echo",
                    startEvent: ["message": "x", ParentLink.startField: ["handler_id": "p", "child_id": "p~1"]],
                    handlerID: nil)
            }
        }
    }
}
