import Foundation
import LeaseholdEngine
import LeaseholdPostgres
import LeaseholdStore
import LeaseholdTestSupport
import Testing

/// A handler created by its first checkpoint (`create(_:owner:token:first:)`) under a reserved
/// token: one commit for a `run` that finishes in its first pass.
@Suite("Creation with the first checkpoint")
struct CreateWithFirstCheckpointTests {
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

    @Test("an owner whose registration lapsed: nothing is written", arguments: StoreFactory.all)
    func lapsedOwner(factory: StoreFactory) async throws {
        try await factory.run { store in
            try await Self.lapse("r9", store)
            let token = try #require(try await store.reserveTokens(1).first)
            await #expect(throws: StoreError.leaseLost("l")) {
                try await store.create(C.new("l"), owner: "r9", token: token, first: Self.finishing())
            }
            #expect(try await store.handler("l") == nil)  // all or nothing
        }
    }

    @Test(
        "a reserved token the store's sequence is not past is refused, and nothing is written",
        arguments: StoreFactory.all)
    func tokenAhead(factory: StoreFactory) async throws {
        try await factory.run { store in
            let reserved = try #require(try await store.reserveTokens(1).first)
            // What a database that lost the reservation (an asynchronous standby promoted) holds:
            // a sequence behind the token.
            let ahead = FencingToken(reserved.rawValue + 1_000)
            await #expect(throws: StoreError.tokenAhead(ahead)) {
                try await store.create(C.new("a"), owner: C.r1, token: ahead, first: Self.finishing())
            }
            #expect(try await store.handler("a") == nil)
            #expect(try await store.create(C.new("a"), owner: C.r1, token: reserved, first: Self.finishing()) != nil)
        }
    }

    @Test(
        "in one flush, a creation whose first checkpoint is refused rolls back alone",
        .enabled(if: TestDatabase.isConfigured, "needs the test Postgres (scripts/test)"))
    func refusedCreationInAFlush() async throws {
        try await TestDatabase.withStore(groupCommit: GroupCommitTests.held) { store, _ in
            try await store.register(C.r1, address: "a", ttl: .seconds(60))
            // Lapsed without a write (a creation would wait for a flush of eight).
            try await store.register("r9", address: "test://r9", ttl: .milliseconds(300))
            let lapsed = try await eventually(timeout: .seconds(20)) {
                try await store.replicas(aliveWithin: .milliseconds(300)).first { $0.id == "r9" }?.alive == false
            }
            try #require(lapsed)
            let tokens = try await store.reserveTokens(2)
            // Eight writes, one flush: the lapsed owner's folded creation, a good one, six plain creations.
            let outcomes = await withTaskGroup(of: (String, Result<Bool, any Error>).self) { group in
                group.addTask {
                    do {
                        _ = try await store.create(C.new("bad"), owner: "r9", token: tokens[0], first: Self.finishing())
                        return ("bad", .success(true))
                    } catch { return ("bad", .failure(error)) }
                }
                group.addTask {
                    do {
                        let answered = try await store.create(
                            C.new("good"), owner: C.r1, token: tokens[1], first: Self.finishing())
                        return ("good", .success(answered?.status == .completed))
                    } catch { return ("good", .failure(error)) }
                }
                for index in 0..<6 {
                    group.addTask {
                        do {
                            _ = try await store.create(C.new("plain\(index)"), owner: C.r1)
                            return ("plain\(index)", .success(true))
                        } catch { return ("plain\(index)", .failure(error)) }
                    }
                }
                var outcomes: [String: Result<Bool, any Error>] = [:]
                for await (id, outcome) in group { outcomes[id] = outcome }
                return outcomes
            }
            #expect(throws: StoreError.leaseLost("bad")) { try outcomes["bad"]?.get() }
            #expect(try await store.handler("bad") == nil)
            #expect(try outcomes["good"]?.get() == true)
            #expect(try await store.handler("good")?.status == .completed)
            for index in 0..<6 {
                #expect(try outcomes["plain\(index)"]?.get() == true)
                #expect(try await store.handler(HandlerID("plain\(index)")) != nil)
            }
            #expect(store.groupCommitStats?.splits == 1)  // the flush was refused, then written one by one
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
