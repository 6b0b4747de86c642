import Foundation
import LeaseholdEngine
import LeaseholdStore
import LeaseholdTestSupport
import Testing

/// An append that does, in the same write, what the appending replica would do next: claim a
/// claimable handler (a reload in one round trip) or answer the inbox of a handler it owns.
@Suite("Append and claim")
struct AppendClaimTests {
    static let r1 = StoreConformanceTests.r1
    static let r2 = StoreConformanceTests.r2

    static func event(_ id: String, _ type: String = "HumanResponseEvent") -> InboxEvent {
        InboxEvent(id: id, event: AnyEvent(type: type, value: ["response": .string(id)]))
    }

    /// A handler created by r1, its start consumed, hibernated.
    static func hibernated(_ store: any HandlerStore, _ id: HandlerID) async throws -> Lease {
        let lease = try await store.create(StoreConformanceTests.new(id.rawValue), owner: r1).lease
        let slept = try await store.hibernate(
            Checkpoint(
                state: StoreConformanceTests.state(1), log: [StoreConformanceTests.record(0)],
                consumedInbox: ["start"]),
            wakeAt: nil, lease: lease)
        #expect(slept)
        return lease
    }

    @Test(
        "an append to a hibernated handler claims it with its state and pending inbox, this event last",
        arguments: StoreFactory.all)
    func claimsHibernated(factory: StoreFactory) async throws {
        try await factory.run { store in
            let slept = try await Self.hibernated(store, "h")
            // An earlier event nobody applied yet (appended without claiming).
            let earlier = try await store.appendInbox("h", Self.event("e1"))
            #expect(earlier.claimed == nil && earlier.owner == nil && earlier.hibernated)

            let receipt = try await store.appendInbox(
                "h", Self.event("e2"), accepting: ["approval"], from: Self.r2, claim: true)
            let claimed = try #require(receipt.claimed)
            #expect(receipt.accepted && receipt.inserted)
            #expect(receipt.owner == nil && receipt.hibernated)  // as found
            #expect(claimed.acquired == .reloaded)
            #expect(claimed.lease.replicaID == Self.r2)
            #expect(claimed.lease.token > slept.token)
            #expect(claimed.state == StoreConformanceTests.state(1))
            #expect(claimed.pendingInbox == [Self.event("e1"), Self.event("e2")])
            let record = try #require(try await store.handler("h"))
            #expect(record.owner == Self.r2 && !record.hibernated && record.fencingToken == claimed.lease.token)
            #expect(claimed.record == record)
            #expect(try await store.leaseHistory("h").map(\.kind) == [.created, .hibernated, .reloaded])
            #expect(try await store.pendingInbox("h") == [Self.event("e1"), Self.event("e2")])
            // Its lease is a lease like any other: the claimer checkpoints under it.
            try await store.checkpoint(
                Checkpoint(
                    state: StoreConformanceTests.state(2), log: [StoreConformanceTests.record(1)],
                    consumedInbox: ["e1", "e2"]),
                lease: claimed.lease)
            #expect(try await store.pendingInbox("h").isEmpty)
        }
    }

    @Test(
        "an append without claim, or by a replica without a current registration, claims nothing",
        arguments: StoreFactory.all)
    func claimsOnlyWhenAsked(factory: StoreFactory) async throws {
        try await factory.run { store in
            _ = try await Self.hibernated(store, "h")
            let plain = try await store.appendInbox("h", Self.event("e1"), accepting: nil, from: Self.r2, claim: false)
            #expect(plain.claimed == nil && plain.pending == nil && plain.inserted)
            #expect(try await store.handler("h")?.hibernated == true)
            // r3 never registered: no current registration, no claim (the event is still appended).
            let stranger = try await store.appendInbox(
                "h", Self.event("e2"), accepting: nil, from: "r3", claim: true)
            #expect(stranger.claimed == nil && stranger.inserted)
            #expect(try await store.handler("h")?.owner == nil)
            #expect(try await store.pendingInbox("h").map(\.id) == ["e1", "e2"])
        }
    }

    @Test(
        "a handler owned under a current lease is not claimed; its owner gets its pending inbox",
        arguments: StoreFactory.all)
    func ownedHandler(factory: StoreFactory) async throws {
        try await factory.run { store in
            let lease = try await store.create(StoreConformanceTests.new("h"), owner: Self.r1).lease
            let other = try await store.appendInbox("h", Self.event("e1"), accepting: nil, from: Self.r2, claim: true)
            #expect(other.claimed == nil && other.pending == nil)
            #expect(other.owner == Self.r1)
            #expect(try await store.handler("h")?.fencingToken == lease.token)

            let own = try await store.appendInbox("h", Self.event("e2"), accepting: nil, from: Self.r1, claim: true)
            #expect(own.claimed == nil)
            let pending = try #require(own.pending)
            #expect(pending.token == lease.token)
            #expect(pending.events.map(\.id) == ["start", "e1", "e2"])
        }
    }

    @Test(
        "a handler whose owner's registration lapsed is failed over to the appending replica",
        arguments: StoreFactory.all)
    func failsOverLapsedOwner(factory: StoreFactory) async throws {
        try await factory.run { store in
            try await store.register("r9", address: "test://r9", ttl: .milliseconds(200))
            let lease = try await store.create(StoreConformanceTests.new("h"), owner: "r9").lease
            // Appended again (the same event id: one row) until r9's registration has lapsed.
            var receipt: InboxReceipt?
            let lapsed = try await eventually(timeout: .seconds(20)) {
                receipt = try await store.appendInbox(
                    "h", Self.event("e1"), accepting: nil, from: Self.r2, claim: true)
                return receipt?.claimed != nil
            }
            try #require(lapsed)
            let claimed = try #require(receipt?.claimed)
            #expect(claimed.acquired == .failedOver)
            #expect(claimed.lease.token > lease.token)
            #expect(claimed.pendingInbox?.map(\.id) == ["start", "e1"])
        }
    }

    @Test("an event for another workflow, or for a finished handler, writes nothing", arguments: StoreFactory.all)
    func refusedWritesNothing(factory: StoreFactory) async throws {
        try await factory.run { store in
            _ = try await Self.hibernated(store, "h")
            let refused = try await store.appendInbox(
                "h", Self.event("e1"), accepting: ["counter"], from: Self.r2, claim: true)
            #expect(!refused.accepted && !refused.inserted && refused.claimed == nil)
            #expect(refused.workflowName == "approval")
            #expect(try await store.pendingInbox("h").isEmpty)
            #expect(try await store.handler("h")?.hibernated == true)

            let lease = try await store.create(StoreConformanceTests.new("done"), owner: Self.r1).lease
            try await store.checkpoint(
                Checkpoint(
                    state: StoreConformanceTests.state(1, status: .completed),
                    log: [StoreConformanceTests.record(0, "StopEvent", terminal: true)], consumedInbox: ["start"]),
                lease: lease)
            await #expect(throws: StoreError.handlerFinished("done")) {
                _ = try await store.appendInbox("done", Self.event("e1"), accepting: nil, from: Self.r2, claim: true)
            }
            await #expect(throws: StoreError.handlerNotFound("nope")) {
                _ = try await store.appendInbox("nope", Self.event("e1"), accepting: nil, from: Self.r2, claim: true)
            }
        }
    }
}
