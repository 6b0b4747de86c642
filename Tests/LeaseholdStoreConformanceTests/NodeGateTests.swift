import Foundation
import LeaseholdEngine
import LeaseholdPostgres
import LeaseholdStore
import LeaseholdTestSupport
import Testing

/// Nothing is written to a database node the replica has not checked (`NodeGate`): after a
/// failover (`TestDatabase.moveNode`: the node reports a later timeline and every session ends),
/// writes fail retryably and signal the move until the replica trusts the new node; reads and
/// renewals go on.
@Suite("Node gate", .enabled(if: TestDatabase.isConfigured, "needs the test Postgres (scripts/test)"))
struct NodeGateTests {
    static let ttl = Duration.seconds(30)

    @Test(.timeLimit(.minutes(1))) func writesWaitForTheNewNodeToBeTrusted() async throws {
        try await TestDatabase.withStore { store, url in
            let renewal = try await store.renew("r1", address: "test://r1", ttl: Self.ttl, excluding: [])
            let node = try #require(renewal.database)
            store.trust(node)
            let lease = try await store.create(StoreConformanceTests.new("h"), owner: "r1").lease

            try await TestDatabase.moveNode(url, timelines: 1)
            var moves = store.signals.databaseMoves.makeAsyncIterator()
            let checkpoint = Checkpoint(
                state: StoreConformanceTests.state(1), log: [StoreConformanceTests.record(0)], consumedInbox: [])
            // The first attempt may meet a connection the move ended (unavailable too); every
            // attempt is refused before anything is written.
            for _ in 0..<3 {
                await #expect(throws: StoreError.self) { try await store.checkpoint(checkpoint, lease: lease) }
            }
            await #expect(throws: StoreError.self) {
                try await store.appendInbox("h", InboxEvent(id: "e1", event: AnyEvent(type: "Tick", value: [:])))
            }
            #expect(await moves.next() != nil)  // the replica is told to check now
            // Reads and renewals reach the new node: the renewal is how it is learnt.
            #expect(try await store.handler("h")?.lastSequence == -1)
            let moved = try #require(
                try await store.renew("r1", address: "test://r1", ttl: Self.ttl, excluding: []).database)
            #expect(moved.timeline == node.timeline + 1)
            #expect(try await store.events("h", after: -1, limit: 10).isEmpty)

            // Checked and trusted: writes go on.
            store.trust(moved)
            try await store.checkpoint(checkpoint, lease: lease)
            #expect(try await store.handler("h")?.lastSequence == 0)
        }
    }

    /// A store that trusted no node yet (a replica before its first renewal) gates nothing.
    @Test func nothingIsGatedBeforeTheFirstTrust() async throws {
        try await TestDatabase.withStore { store, url in
            try await TestDatabase.moveNode(url, timelines: 3)
            // The move ended every session: a pooled connection may fail once, before sending
            // anything (unavailable, retryable, as after a real failover). Not a refusal by the gate.
            try await Self.retryingEndedSessions {
                _ = try await store.heartbeat("r1", address: "test://r1", ttl: Self.ttl)
            }
            try await Self.retryingEndedSessions {
                do {
                    _ = try await store.create(StoreConformanceTests.new("h"), owner: "r1")
                } catch StoreError.handlerExists {
                    return  // an earlier try committed
                }
            }
            #expect(try await store.handler("h") != nil)
        }
    }

    /// `body`, again while it fails as unavailable on a session the move ended, backing off as a
    /// replica's callers do: the pool hands out an ended connection until it has seen it close
    /// (under load, for seconds), and says nothing when it has. At most 20 tries, about 10 s.
    static func retryingEndedSessions(_ body: () async throws -> Void) async throws {
        for attempt in 1...20 {
            do {
                return try await body()
            } catch StoreError.unavailable(let reason) where attempt < 20 && reason.lowercased().contains("closed") {
                try await Task.sleep(for: .milliseconds(min(1_000, 25 * attempt * attempt)))
            }
        }
    }
}
