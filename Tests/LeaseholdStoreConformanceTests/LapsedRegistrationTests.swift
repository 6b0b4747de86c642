import Foundation
import LeaseholdEngine
import LeaseholdStore
import LeaseholdTestSupport
import Testing

/// Leases ride on their replica's registration: once it lapsed, no write under them lands, even
/// while the handler row still names the replica and its token (nobody claimed it yet).
@Suite("Lapsed registration")
struct LapsedRegistrationTests {
    @Test(
        "checkpoint, hibernate and release under a lease whose registration lapsed are rejected",
        arguments: StoreFactory.all)
    func writesRejected(factory: StoreFactory) async throws {
        try await factory.run { store in
            try await store.register("r9", address: "test://r9", ttl: .milliseconds(300))
            let lease = try await store.create(StoreConformanceTests.new("h"), owner: "r9").lease
            let lapsed = try await eventually(timeout: .seconds(20)) {
                try await (store.handler("h")?.leaseExpiresAt ?? .distantFuture) < Date()
            }
            try #require(lapsed)
            let record = try #require(try await store.handler("h"))
            #expect(record.owner == "r9" && record.fencingToken == lease.token)  // unclaimed

            let checkpoint = Checkpoint(
                state: StoreConformanceTests.state(1), log: [StoreConformanceTests.record(0)], consumedInbox: ["start"])
            await #expect(throws: StoreError.leaseLost("h")) { try await store.checkpoint(checkpoint, lease: lease) }
            await #expect(throws: StoreError.leaseLost("h")) {
                _ = try await store.hibernate(checkpoint, wakeAt: nil, lease: lease)
            }
            await #expect(throws: StoreError.leaseLost("h")) { try await store.release(checkpoint, lease: lease) }
            #expect(try await store.events("h", after: -1, limit: 10).isEmpty)
            #expect(try await store.pendingInbox("h").map(\.id) == ["start"])
        }
    }
}
