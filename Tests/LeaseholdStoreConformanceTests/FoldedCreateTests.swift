import Foundation
import LeaseholdEngine
import LeaseholdPostgres
import LeaseholdStore
import LeaseholdTestSupport
import Testing

/// A handler created by its first checkpoint (`create(_:owner:token:first:)`) under a reserved
/// token: one commit for a `run` that finishes in its first pass.
@Suite("Creation with the first checkpoint")
struct FoldedCreateTests {
    typealias C = StoreConformanceTests

    static func finishing() -> Checkpoint {
        var state = C.state(2, status: .completed)
        state.workflowName = "approval"
        return Checkpoint(
            state: state, log: [C.record(0, "StartEvent"), C.record(1, "StopEvent", terminal: true)],
            consumedInbox: ["start"])
    }

    /// Registers `replica` for 300 ms and waits until its leases have lapsed.
    static func lapse(_ replica: ReplicaID, _ store: any HandlerStore) async throws {
        try await store.register(replica, address: "test://\(replica)", ttl: .milliseconds(300))
        let probe = HandlerID("probe-\(replica)")
        _ = try await store.create(C.new(probe.rawValue), owner: replica)
        let lapsed = try await eventually(timeout: .seconds(20)) {
            try await (store.handler(probe)?.leaseExpiresAt ?? .distantFuture) < Date()
        }
        try #require(lapsed)
    }

    @Test("reserved tokens are new, rising, and never handed out again", arguments: StoreFactory.all)
    func reservedTokens(factory: StoreFactory) async throws {
        try await factory.run { store in
            let before = try await store.create(C.new("a"), owner: C.r1).lease.token
            let reserved = try await store.reserveTokens(5)
            #expect(reserved.count == 5 && reserved == reserved.sorted() && Set(reserved).count == 5)
            #expect(reserved.allSatisfy { $0 > before })
            let after = try await store.create(C.new("b"), owner: C.r1).lease.token
            #expect(after > reserved.max()!)
            #expect(try await store.reserveTokens(0).isEmpty)
        }
    }

    @Test(
        "a finishing first checkpoint: created and finished in one write, answered like a checkpoint",
        arguments: StoreFactory.all)
    func finishedInOneWrite(factory: StoreFactory) async throws {
        try await factory.run { store in
            let token = try #require(try await store.reserveTokens(1).first)
            let answered = try await store.create(C.new("f"), owner: C.r1, token: token, first: Self.finishing())
            let record = try #require(try await store.handler("f"))
            #expect(answered == record)
            #expect(record.status == .completed && record.owner == nil && record.fencingToken == token)
            #expect(record.result?.type == "StopEvent" && record.lastSequence == 1)
            #expect(try await store.events("f", after: -1, limit: 10).map(\.sequence) == [0, 1])
            #expect(try await store.pendingInbox("f").isEmpty)
            #expect(try await store.leaseHistory("f").map(\.kind) == [.created, .finished])
            #expect(try await store.leaseHistory("f").map(\.token) == [token, token])
        }
    }

    @Test(
        "a running first checkpoint: created under the reserved token, held, and written on from there",
        arguments: StoreFactory.all)
    func runningThenCheckpointed(factory: StoreFactory) async throws {
        try await factory.run { store in
            let token = try #require(try await store.reserveTokens(1).first)
            let first = Checkpoint(state: C.state(1), log: [C.record(0)], consumedInbox: ["start"])
            #expect(try await store.create(C.new("r"), owner: C.r1, token: token, first: first) == nil)
            let record = try #require(try await store.handler("r"))
            #expect(record.status == .running && record.owner == C.r1 && record.fencingToken == token)
            #expect(record.lastSequence == 0)
            #expect(try await store.pendingInbox("r").isEmpty)
            #expect(try await store.claim(C.r2, limit: 10, only: nil).isEmpty)  // the lease is current
            let lease = Lease(handlerID: "r", replicaID: C.r1, token: token)
            try await store.checkpoint(
                Checkpoint(state: C.state(2), log: [C.record(1)], consumedInbox: []), lease: lease)
            #expect(try await store.events("r", after: -1, limit: 10).map(\.sequence) == [0, 1])
            #expect(try await store.heartbeat(C.r1, address: "a", ttl: C.ttl)["r"] == token)
        }
    }

    @Test("an id in use: refused, and nothing of the existing handler changes", arguments: StoreFactory.all)
    func existingID(factory: StoreFactory) async throws {
        try await factory.run { store in
            let existing = try await store.create(C.new("x"), owner: C.r2)
            let token = try #require(try await store.reserveTokens(1).first)
            await #expect(throws: StoreError.handlerExists("x")) {
                try await store.create(C.new("x"), owner: C.r1, token: token, first: Self.finishing())
            }
            let record = try #require(try await store.handler("x"))
            #expect(record == existing.record)
            #expect(try await store.events("x", after: -1, limit: 10).isEmpty)
            #expect(try await store.pendingInbox("x").map(\.id) == ["start"])
        }
    }

    @Test("an owner whose registration lapsed: the first checkpoint is not written", arguments: StoreFactory.all)
    func lapsedOwner(factory: StoreFactory) async throws {
        try await factory.run { store in
            try await Self.lapse("r9", store)
            let token = try #require(try await store.reserveTokens(1).first)
            await #expect(throws: StoreError.leaseLost("l")) {
                try await store.create(C.new("l"), owner: "r9", token: token, first: Self.finishing())
            }
            #expect(try await store.events("l", after: -1, limit: 10).isEmpty)
            // Created or not, it is not finished, and any replica may run it from its start.
            let record = try await store.handler("l")
            #expect(record == nil || record?.status == .running)
        }
    }

    @Test(
        "without group commit: creation and first checkpoint in one transaction",
        .enabled(if: TestDatabase.isConfigured, "needs the test Postgres (scripts/test)"))
    func alone() async throws {
        try await TestDatabase.withStore(groupCommit: nil) { store, _ in
            try await store.register(C.r1, address: "a", ttl: .seconds(60))
            let token = try #require(try await store.reserveTokens(1).first)
            let answered = try await store.create(C.new("s"), owner: C.r1, token: token, first: Self.finishing())
            #expect(answered?.status == .completed && answered?.fencingToken == token)
            #expect(try await store.leaseHistory("s").map(\.kind) == [.created, .finished])
            try await Self.lapse("r9", store)
            let another = try #require(try await store.reserveTokens(1).first)
            await #expect(throws: StoreError.leaseLost("t")) {
                try await store.create(C.new("t"), owner: "r9", token: another, first: Self.finishing())
            }
            #expect(try await store.handler("t") == nil)  // one transaction: rolled back whole
        }
    }
}
