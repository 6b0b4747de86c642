import LeaseholdEngine
import LeaseholdStore
import LeaseholdTestSupport
import Testing

/// Crash containment's part of the store contract, on every store: a crash marks the dead
/// replica's named handlers as suspects (claims say so), and a quarantined handler is released.
@Suite("Crash records and quarantine")
struct CrashRecordTests {
    typealias C = StoreConformanceTests

    @Test(
        "a crash marks only the named handlers still running, whoever owns them; claims answer them as suspects",
        arguments: StoreFactory.all)
    func crashMarksSuspects(factory: StoreFactory) async throws {
        try await factory.run { store in
            let inStep = try await store.create(C.new("in-step"), owner: C.r1).lease
            let neighbour = try await store.create(C.new("neighbour"), owner: C.r1).lease
            _ = try await store.create(C.new("elsewhere"), owner: C.r2)
            let marked = try await store.recordCrash(of: C.r1, handlers: ["in-step", "unknown"], all: false, signal: 4)
            #expect(marked == ["in-step"])  // not an unknown id, not the neighbour
            // A named handler another replica took meanwhile is still marked (r1 ran its step).
            #expect(
                try await store.recordCrash(of: C.r1, handlers: ["elsewhere"], all: false, signal: 4) == ["elsewhere"])
            // The dead replica's leases lapse; r2 takes both of its handlers.
            try await store.register(C.r1, address: "test://r1", ttl: .milliseconds(1))
            try await Task.sleep(for: .milliseconds(50))
            _ = try await store.heartbeat(C.r2, address: "test://r2", ttl: C.ttl)
            let claimed = try await store.claim(C.r2, limit: 10, only: nil)
            let suspects = Dictionary(uniqueKeysWithValues: claimed.map { ($0.record.id, $0.suspect) })
            #expect(suspects == ["in-step": true, "neighbour": false])
            #expect(inStep.token < claimed.first { $0.record.id == "in-step" }!.lease.token)
            #expect(neighbour.token < claimed.first { $0.record.id == "neighbour" }!.lease.token)
            // `all`: every running handler the replica owns (those marked already may be left out).
            let everything = try await store.recordCrash(of: C.r2, handlers: [], all: true, signal: 11)
            #expect(Set(everything).contains("neighbour"))  // newly a suspect
            #expect(Set(everything).isSubset(of: ["in-step", "neighbour", "elsewhere"]))
        }
    }

    @Test(
        "only a quarantined handler is released: running, unowned, claimable, still a suspect",
        arguments: StoreFactory.all)
    func releaseQuarantine(factory: StoreFactory) async throws {
        try await factory.run { store in
            let lease = try await store.create(C.new("q"), owner: C.r1).lease
            _ = try await store.recordCrash(of: C.r1, handlers: ["q"], all: false, signal: 4)
            // An answer accepted before the quarantine and not yet applied: kept for the release.
            let answer = InboxEvent(id: "answer", event: AnyEvent(type: "HumanResponseEvent", value: ["response": "y"]))
            _ = try await store.appendInbox("q", answer, accepting: nil, from: nil, claim: false)
            var quarantined = C.state(2, status: .failed)
            quarantined.quarantine = "quarantined: step 'ask' ended its process with signal 4"
            quarantined.error = quarantined.quarantine
            try await store.checkpoint(
                Checkpoint(
                    state: quarantined, log: [C.record(0), C.record(1, "WorkflowFailedEvent", terminal: true)],
                    consumedInbox: ["start"]), lease: lease)
            #expect(try await store.handler("q")?.status == .failed)
            // An ordinary failure, a completed handler and an unknown id are not released.
            let failed = try await store.create(C.new("failed"), owner: C.r1).lease
            try await store.checkpoint(
                Checkpoint(
                    state: C.state(1, status: .failed), log: [C.record(0, "WorkflowFailedEvent", terminal: true)],
                    consumedInbox: ["start"]), lease: failed)
            #expect(try await store.releaseQuarantine("failed") == false)
            #expect(try await store.releaseQuarantine("nope") == false)
            #expect(try await store.releaseQuarantine("q"))
            let record = try #require(try await store.handler("q"))
            #expect(record.status == .running && record.owner == nil && record.error == nil)
            #expect(try await store.releaseQuarantine("q") == false)  // once
            let claimed = try await store.claim(C.r2, limit: 10, only: "q")
            #expect(claimed.map(\.record.id) == ["q"])
            #expect(claimed.first?.suspect == true)
            #expect(claimed.first?.state.quarantine != nil)  // the runtime applies the release
            #expect(claimed.first?.state.nextSequence == 2)
            #expect(try await store.pendingInbox("q").map(\.id) == ["answer"])
        }
    }
}
