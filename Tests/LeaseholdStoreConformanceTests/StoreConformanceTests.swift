import Foundation
import LeaseholdEngine
import LeaseholdKit
import LeaseholdStore
import LeaseholdTestSupport
import Testing

/// The store contract, run against every store (`StoreFactory.all`).
@Suite("Store conformance")
struct StoreConformanceTests {
    static let ttl = Duration.seconds(30)
    static let r1 = ReplicaID("r1")
    static let r2 = ReplicaID("r2")

    static func new(_ id: String = UUID().uuidString, workflow: String = "approval") -> NewHandler {
        NewHandler(
            id: HandlerID(id), workflowName: workflow, runID: "run",
            startEvent: InboxEvent(id: "start", event: AnyEvent(type: "StartEvent", value: ["request": "x"])))
    }

    static func record(_ sequence: Int64, _ type: String = "Tick", terminal: Bool = false) -> LogRecord {
        LogRecord(
            sequence: sequence, type: type, value: ["n": .int(Int(sequence))], types: nil, qualifiedName: "q.\(type)",
            isInternal: false, isTerminal: terminal)
    }

    static func state(_ next: Int64, status: HandlerStatus = .running) -> HandlerState {
        var state = HandlerState(workflowName: "approval")
        state.started = true
        state.nextSequence = next
        state.status = status
        state.context["marker"] = .int(Int(next))
        return state
    }

    @Test(
        "create owns the handler with a fresh token and puts the start event in the inbox", arguments: StoreFactory.all)
    func create(factory: StoreFactory) async throws {
        try await factory.run { store in
            _ = try await store.heartbeat(Self.r1, address: "a", ttl: Self.ttl)
            let created = try await store.create(Self.new("h1"), owner: Self.r1)
            let lease = created.lease
            let record = try #require(try await store.handler("h1"))
            #expect(record.fencingToken == lease.token)
            #expect(created.record == record)  // the creator needs no read
            #expect(created.state == HandlerState(workflowName: "approval"))
            #expect(record.status == .running)
            #expect(record.owner == Self.r1)
            #expect(record.lastSequence == -1)
            #expect(try await store.pendingInbox("h1").map(\.id) == ["start"])
            #expect(created.pendingInbox == [Self.new("h1").startEvent])  // the launch needs no inbox read
            await #expect(throws: StoreError.handlerExists("h1")) {
                try await store.create(Self.new("h1"), owner: Self.r2)
            }
            #expect(try await store.handler("nope") == nil)
        }
    }

    @Test("checkpoint appends the log, consumes inbox ids and updates the record", arguments: StoreFactory.all)
    func checkpoint(factory: StoreFactory) async throws {
        try await factory.run { store in
            let lease = try await store.create(Self.new("h"), owner: Self.r1).lease
            let running = try await store.checkpoint(
                Checkpoint(state: Self.state(2), log: [Self.record(0), Self.record(1)], consumedInbox: ["start"]),
                lease: lease)
            #expect(running == nil)  // only a finishing checkpoint answers the record
            try await store.checkpoint(
                Checkpoint(state: Self.state(3), log: [Self.record(2)], consumedInbox: []), lease: lease)
            #expect(try await store.events("h", after: -1, limit: 100).map(\.sequence) == [0, 1, 2])
            #expect(try await store.events("h", after: 0, limit: 1).map(\.sequence) == [1])
            #expect(try await store.events("h", after: 2, limit: 100).isEmpty)
            #expect(try await store.pendingInbox("h").isEmpty)
            #expect(try await store.handler("h")?.lastSequence == 2)
            // A finished state completes the record and frees the lease; the write answers the
            // record as it committed it (a `run` answers from it, reading nothing back).
            let answered = try await store.checkpoint(
                Checkpoint(
                    state: Self.state(4, status: .completed), log: [Self.record(3, "StopEvent", terminal: true)],
                    consumedInbox: []), lease: lease)
            let done = try #require(try await store.handler("h"))
            #expect(answered == done)
            #expect(done.status == .completed)
            #expect(done.result?.type == "StopEvent")
            #expect(done.owner == nil)
            #expect(done.completedAt != nil)
        }
    }

    @Test("a write with a stale token is rejected and changes nothing", arguments: StoreFactory.all)
    func staleTokenRejected(factory: StoreFactory) async throws {
        try await factory.run { store in
            let lease = try await store.create(Self.new("h"), owner: Self.r1).lease
            try await store.release(
                Checkpoint(state: Self.state(1), log: [Self.record(0)], consumedInbox: []), lease: lease)
            let claimed = try #require(try await store.claim(Self.r2, limit: 10, only: "h").first)
            #expect(claimed.lease.token > lease.token)
            #expect(claimed.state.context["marker"] == 1)
            try await store.checkpoint(
                Checkpoint(state: Self.state(2), log: [Self.record(1)], consumedInbox: []), lease: claimed.lease)
            await #expect(throws: StoreError.leaseLost("h")) {
                try await store.checkpoint(
                    Checkpoint(state: Self.state(9), log: [Self.record(2)], consumedInbox: ["start"]), lease: lease)
            }
            await #expect(throws: StoreError.leaseLost("h")) {
                _ = try await store.hibernate(
                    Checkpoint(state: Self.state(9), log: [], consumedInbox: []), wakeAt: nil, lease: lease)
            }
            await #expect(throws: StoreError.leaseLost("h")) { try await store.release(nil, lease: lease) }
            let record = try #require(try await store.handler("h"))
            #expect(record.lastSequence == 1)
            #expect(record.owner == Self.r2)
            #expect(try await store.events("h", after: -1, limit: 10).count == 2)
            #expect(try await store.pendingInbox("h").map(\.id) == ["start"])
        }
    }

    @Test("an expired lease is claimable by another replica; the old owner is then fenced", arguments: StoreFactory.all)
    func expiredLease(factory: StoreFactory) async throws {
        try await factory.run { store in
            // r1's registration, which carries its leases, lasts long enough that no stall of this
            // test can outlive it before the first claim.
            try await store.register(Self.r1, address: "a", ttl: Self.ttl)
            let old = try await store.create(Self.new("h"), owner: Self.r1).lease
            #expect(try await store.claim(Self.r2, limit: 10, only: nil).isEmpty)
            // r1's last renewal asks for 300 ms only and none follows: the lease lapses with it.
            _ = try await store.heartbeat(Self.r1, address: "a", ttl: .milliseconds(300))
            let claimed = try await eventually(timeout: .seconds(20)) {
                try await !store.claim(Self.r2, limit: 10, only: nil).isEmpty
            }
            #expect(claimed)
            let record = try #require(try await store.handler("h"))
            #expect(record.owner == Self.r2)
            #expect(record.fencingToken > old.token)
            await #expect(throws: StoreError.leaseLost("h")) {
                try await store.checkpoint(
                    Checkpoint(state: Self.state(1), log: [Self.record(0)], consumedInbox: []), lease: old)
            }
            // The old owner's renewal finds its registration lapsed: it holds nothing.
            #expect(try await store.heartbeat(Self.r1, address: "a", ttl: Self.ttl).isEmpty)
            #expect(try await store.heartbeat(Self.r2, address: "b", ttl: Self.ttl) == ["h": record.fencingToken])
        }
    }

    @Test("an owned handler under a live lease is never claimed", arguments: StoreFactory.all)
    func liveLeaseNotClaimable(factory: StoreFactory) async throws {
        try await factory.run { store in
            _ = try await store.create(Self.new("h"), owner: Self.r1)
            #expect(try await store.claim(Self.r2, limit: 10, only: "h").isEmpty)
            #expect(try await store.claim(Self.r2, limit: 10, only: nil).isEmpty)
        }
    }

    @Test("hibernate is refused while the inbox holds an unconsumed event", arguments: StoreFactory.all)
    func hibernateRefusedWithInbox(factory: StoreFactory) async throws {
        try await factory.run { store in
            let lease = try await store.create(Self.new("h"), owner: Self.r1).lease
            try await store.checkpoint(
                Checkpoint(state: Self.state(1), log: [Self.record(0)], consumedInbox: ["start"]), lease: lease)
            _ = try await store.appendInbox(
                "h", InboxEvent(id: "e1", event: AnyEvent(type: "HumanResponseEvent", value: ["response": "y"])))
            let refused = try await store.hibernate(
                Checkpoint(state: Self.state(1), log: [], consumedInbox: []), wakeAt: nil, lease: lease)
            #expect(!refused)
            #expect(try await store.handler("h")?.hibernated == false)
            #expect(try await store.handler("h")?.owner == Self.r1)
            // Consuming it in the same hibernation is allowed.
            let done = try await store.hibernate(
                Checkpoint(state: Self.state(2), log: [Self.record(1)], consumedInbox: ["e1"]), wakeAt: nil,
                lease: lease)
            #expect(done)
            let record = try #require(try await store.handler("h"))
            #expect(record.hibernated)
            #expect(record.owner == nil)
            #expect(record.lastSequence == 1)
        }
    }

    @Test("a hibernated handler is claimable only with an inbox event or a due timer", arguments: StoreFactory.all)
    func hibernatedClaimable(factory: StoreFactory) async throws {
        try await factory.run { store in
            let lease = try await store.create(Self.new("h"), owner: Self.r1).lease
            #expect(
                try await store.hibernate(
                    Checkpoint(state: Self.state(0), log: [], consumedInbox: ["start"]), wakeAt: nil, lease: lease))
            #expect(try await store.claim(Self.r2, limit: 10, only: nil).isEmpty)
            #expect(try await store.claim(Self.r2, limit: 10, only: "h").isEmpty)
            let receipt = try await store.appendInbox("h", InboxEvent(id: "e", event: AnyEvent(type: "X")))
            #expect(receipt.owner == nil)
            #expect(receipt.hibernated)
            #expect(receipt.inserted)
            let second = InboxEvent(id: "f", event: AnyEvent(type: "Y", value: ["b": ["c": 2]]))
            _ = try await store.appendInbox("h", second)
            let claimed = try #require(try await store.claim(Self.r2, limit: 10, only: "h").first)
            #expect(claimed.state == Self.state(0))
            // The claim carries the pending inbox, in order (the reload needs no further read).
            #expect(claimed.pendingInbox == [InboxEvent(id: "e", event: AnyEvent(type: "X")), second])
            #expect(claimed.lease.token > lease.token)
            #expect(try await store.handler("h")?.hibernated == false)

            let timed = try await store.create(Self.new("t"), owner: Self.r1).lease
            #expect(
                try await store.hibernate(
                    Checkpoint(state: Self.state(0), log: [], consumedInbox: ["start"]),
                    wakeAt: Date().addingTimeInterval(-1), lease: timed))
            let due = try await store.claim(Self.r2, limit: 10, only: nil)
            #expect(due.map(\.record.id) == ["t"])
            #expect(due.first?.pendingInbox == [])
        }
    }

    @Test(
        "inbox append: unknown → not found, finished → finished, same id twice → one row", arguments: StoreFactory.all)
    func inboxAppend(factory: StoreFactory) async throws {
        try await factory.run { store in
            let event = InboxEvent(id: "e", event: AnyEvent(type: "X", value: ["a": 1]))
            await #expect(throws: StoreError.handlerNotFound("nope")) { _ = try await store.appendInbox("nope", event) }
            let lease = try await store.create(Self.new("h"), owner: Self.r1).lease
            #expect(try await store.appendInbox("h", event).inserted)
            #expect(try await store.appendInbox("h", event).inserted == false)
            #expect(try await store.pendingInbox("h").map(\.id) == ["start", "e"])
            #expect(try await store.pendingInbox("h").last?.event == event.event)
            try await store.checkpoint(
                Checkpoint(
                    state: Self.state(1, status: .completed), log: [Self.record(0, "StopEvent", terminal: true)],
                    consumedInbox: []), lease: lease)
            await #expect(throws: StoreError.handlerFinished("h")) { _ = try await store.appendInbox("h", event) }
        }
    }

    @Test("cancel logs the terminal event, raises the token and fences the owner", arguments: StoreFactory.all)
    func cancel(factory: StoreFactory) async throws {
        try await factory.run { store in
            let lease = try await store.create(Self.new("h"), owner: Self.r1).lease
            try await store.checkpoint(
                Checkpoint(state: Self.state(2), log: [Self.record(0), Self.record(1)], consumedInbox: []), lease: lease
            )
            guard case .cancelled(let record) = try await store.cancel("h") else {
                Issue.record("expected cancelled")
                return
            }
            #expect(record.status == .cancelled)
            #expect(record.fencingToken > lease.token)
            #expect(record.lastSequence == 2)
            let log = try await store.events("h", after: -1, limit: 10)
            #expect(log.map(\.type) == ["Tick", "Tick", "WorkflowCancelledEvent"])
            #expect(log.last?.types == ["StopEvent"])
            await #expect(throws: StoreError.leaseLost("h")) {
                try await store.checkpoint(
                    Checkpoint(state: Self.state(3), log: [Self.record(2)], consumedInbox: []), lease: lease)
            }
            guard case .alreadyFinished = try await store.cancel("h") else {
                Issue.record("expected alreadyFinished")
                return
            }
            await #expect(throws: StoreError.handlerNotFound("zz")) { _ = try await store.cancel("zz") }
        }
    }

    @Test("delete removes the handler with its inbox and log", arguments: StoreFactory.all)
    func delete(factory: StoreFactory) async throws {
        try await factory.run { store in
            let lease = try await store.create(Self.new("h"), owner: Self.r1).lease
            try await store.checkpoint(
                Checkpoint(state: Self.state(1), log: [Self.record(0)], consumedInbox: []), lease: lease)
            #expect(try await store.delete("h", run: "other-run") == false)  // another run of "h": kept
            #expect(try await store.handler("h") != nil)
            #expect(try await store.delete("h", run: "run"))
            #expect(try await store.delete("h", run: "run") == false)
            #expect(try await store.handler("h") == nil)
            #expect(try await store.events("h", after: -1, limit: 10).isEmpty)
            await #expect(throws: StoreError.leaseLost("h")) {
                try await store.checkpoint(
                    Checkpoint(state: Self.state(2), log: [Self.record(1)], consumedInbox: []), lease: lease)
            }
            // Nothing of the deleted run is left to a new run of the id: log, inbox, lease history.
            let again = try await store.create(Self.new("h"), owner: Self.r2).lease
            #expect(try await store.events("h", after: -1, limit: 10).isEmpty)
            #expect(try await store.pendingInbox("h").map(\.id) == ["start"])
            #expect(try await store.leaseHistory("h").map(\.kind) == [.created])
            try await store.checkpoint(
                Checkpoint(state: Self.state(1), log: [Self.record(0)], consumedInbox: ["start"]), lease: again)
            #expect(try await store.events("h", after: -1, limit: 10).map(\.sequence) == [0])
        }
    }

    @Test("a log record that repeats a sequence is refused", arguments: StoreFactory.all)
    func sequenceConflict(factory: StoreFactory) async throws {
        try await factory.run { store in
            let lease = try await store.create(Self.new("h"), owner: Self.r1).lease
            try await store.checkpoint(
                Checkpoint(state: Self.state(1), log: [Self.record(0)], consumedInbox: []), lease: lease)
            await #expect(throws: StoreError.self) {
                try await store.checkpoint(
                    Checkpoint(state: Self.state(2), log: [Self.record(0)], consumedInbox: []), lease: lease)
            }
            #expect(try await store.events("h", after: -1, limit: 10).count == 1)
        }
    }

    /// A checkpoint writes only over the last sequence its writer saw durable: over a row that
    /// holds less (a database that lost a checkpoint, not yet found out), a checkpoint with
    /// records or without is refused and writes nothing, rather than papering over the loss.
    @Test("a checkpoint over a row that lost its last checkpoint is refused", arguments: StoreFactory.all)
    func checkpointExpectsTheLastSequence(factory: StoreFactory) async throws {
        try await factory.run { store in
            let lease = try await store.create(Self.new("h"), owner: Self.r1).lease
            try await store.checkpoint(
                Checkpoint(state: Self.state(1), log: [Self.record(0)], consumedInbox: []), lease: lease)
            // The writer believes sequences 0-2 durable; the row holds 0 only.
            for checkpoint in [
                Checkpoint(state: Self.state(4), log: [Self.record(3)], consumedInbox: []),
                Checkpoint(state: Self.state(3), log: [], consumedInbox: []),
            ] {
                #expect(checkpoint.expectedLastSequence == 2)
                await #expect(throws: StoreError.self) { try await store.checkpoint(checkpoint, lease: lease) }
            }
            let record = try #require(try await store.handler("h"))
            #expect(record.lastSequence == 0)
            #expect(try await store.events("h", after: -1, limit: 10).map(\.sequence) == [0])
            // The writer that saw what the row holds goes on.
            try await store.checkpoint(
                Checkpoint(state: Self.state(2), log: [Self.record(1)], consumedInbox: []), lease: lease)
            #expect(try await store.handler("h")?.lastSequence == 1)
        }
    }

    @Test("heartbeat registers replicas; list, filters and counts", arguments: StoreFactory.all)
    func listing(factory: StoreFactory) async throws {
        try await factory.run { store in
            _ = try await store.heartbeat(Self.r1, address: "http://a", ttl: Self.ttl)
            _ = try await store.heartbeat(Self.r2, address: "http://b", ttl: Self.ttl)
            let a = try await store.create(Self.new("a", workflow: "echo"), owner: Self.r1).lease
            _ = try await store.create(Self.new("b", workflow: "counter"), owner: Self.r1)
            let c = try await store.create(Self.new("c", workflow: "counter"), owner: Self.r2).lease
            try await store.checkpoint(
                Checkpoint(
                    state: Self.state(1, status: .completed), log: [Self.record(0, "StopEvent", terminal: true)],
                    consumedInbox: []), lease: a)
            #expect(
                try await store.hibernate(
                    Checkpoint(state: Self.state(0), log: [], consumedInbox: ["start"]), wakeAt: nil, lease: c))
            let replicas = try await store.replicas(aliveWithin: Self.ttl)
            #expect(replicas.map(\.id) == [Self.r1, Self.r2])
            #expect(replicas.map(\.handlersOwned) == [1, 0])
            #expect(replicas.allSatisfy { $0.alive })
            let all = try await store.handlers(HandlerFilter())
            #expect(Set(all.map(\.id.rawValue)) == ["a", "b", "c"])
            #expect(try await store.handlers(HandlerFilter(statuses: [.completed])).map(\.id) == ["a"])
            let counters = try await store.handlers(HandlerFilter(workflows: ["counter"]))
            #expect(Set(counters.map(\.id.rawValue)) == ["b", "c"])
            #expect(try await store.handlers(HandlerFilter(statuses: [.running], workflows: ["echo"])).isEmpty)
            let counts = try await store.counts()
            let figures: [Int] = [counts.running, counts.hibernated, counts.completed, counts.failed, counts.cancelled]
            #expect(figures == [1, 1, 1, 0, 0])
            try await store.deregister(Self.r2)
            #expect(try await store.replicas(aliveWithin: Self.ttl).map(\.id) == [Self.r1])
        }
    }

    @Test("log readers are woken when a checkpoint commits", arguments: StoreFactory.all)
    func logSignals(factory: StoreFactory) async throws {
        try await factory.run { store in
            let lease = try await store.create(Self.new("h"), owner: Self.r1).lease
            let version = store.signals.logVersion("h")
            try await store.checkpoint(
                Checkpoint(state: Self.state(1), log: [Self.record(0)], consumedInbox: []), lease: lease)
            // Readers wait on the version; a wake-up may be spurious, so they re-check (bounded here).
            let deadline = ContinuousClock.now + .seconds(10)
            while store.signals.logVersion("h") == version, ContinuousClock.now < deadline {
                await store.signals.waitForLogChange("h", since: version, timeout: .seconds(10))
            }
            #expect(store.signals.logVersion("h") != version)
        }
    }

    @Test(
        "leases ride on the registration: a new registration or a deregistration releases them",
        arguments: StoreFactory.all)
    func registrationCarriesLeases(factory: StoreFactory) async throws {
        try await factory.run { store in
            let a = try await store.create(Self.new("a"), owner: Self.r1).lease
            let b = try await store.create(Self.new("b"), owner: Self.r1).lease
            #expect(try await store.heartbeat(Self.r1, address: "a", ttl: Self.ttl) == ["a": a.token, "b": b.token])
            let record = try #require(try await store.handler("a"))
            // The effective expiry is the registration's (the lease's own cap is infinite).
            let expiry = try #require(record.leaseExpiresAt)
            #expect(expiry > Date() && expiry <= Date().addingTimeInterval(Double(Self.ttl.components.seconds) + 1))
            // r1 restarts: its old leases are void at once, and another replica takes them.
            try await store.register(Self.r1, address: "a", ttl: Self.ttl)
            #expect(try await store.handler("a")?.owner == nil)
            #expect(try await store.handler("a")?.leaseExpiresAt == nil)
            let taken = try await store.claim(Self.r2, limit: 10, only: nil)
            #expect(Set(taken.map(\.record.id)) == ["a", "b"])
            #expect(taken.allSatisfy { $0.lease.token > max(a.token, b.token) })
            #expect(try await store.heartbeat(Self.r1, address: "a", ttl: Self.ttl).isEmpty)
            // r2 shuts down: deregistering releases what it still carries.
            try await store.deregister(Self.r2)
            #expect(try await store.handler("b")?.owner == nil)
            // A replica whose registration lapsed (or never was) claims nothing.
            #expect(try await store.claim("unregistered", limit: 10, only: nil).isEmpty)
        }
    }

    @Test(
        "a lease left out of renewal expires with the registration it was renewed from; the others go on",
        arguments: StoreFactory.all)
    func excludedLeaseExpires(factory: StoreFactory) async throws {
        try await factory.run { store in
            // r1's registration lasts 8 s: the two creations and the renewal below run within it
            // even on a loaded machine (at 3 s, a CI run beside a CPU hog and a simulator let it
            // lapse first, 2026-12-08, and the renewal then started anew, holding nothing).
            try await store.register(Self.r1, address: "a", ttl: .seconds(8))
            let stuck = try await store.create(Self.new("stuck"), owner: Self.r1).lease
            let fine = try await store.create(Self.new("fine"), owner: Self.r1).lease
            // r1 renews for 30 s but leaves "stuck" out: that lease keeps the 8 s registration it was
            // renewed from as its cap, and r2 takes it once that passes; "fine" stays with r1.
            let held = try await store.heartbeat(Self.r1, address: "a", ttl: Self.ttl, excluding: ["stuck"])
            #expect(held["fine"] == fine.token)
            var taken: [ClaimedHandler] = []
            let moved = try await eventually(timeout: .seconds(40)) {
                taken = try await store.claim(Self.r2, limit: 10, only: nil)
                return !taken.isEmpty
            }
            #expect(moved)
            #expect(taken.map(\.record.id) == ["stuck"])
            await #expect(throws: StoreError.leaseLost("stuck")) {
                try await store.checkpoint(
                    Checkpoint(state: Self.state(1), log: [Self.record(0)], consumedInbox: []), lease: stuck)
            }
            try await store.checkpoint(
                Checkpoint(state: Self.state(1), log: [Self.record(0)], consumedInbox: []), lease: fine)
            #expect(try await store.heartbeat(Self.r1, address: "a", ttl: Self.ttl) == ["fine": fine.token])
        }
    }

    @Test("tokens never repeat for a handler id, across delete and re-creation", arguments: StoreFactory.all)
    func tokensNeverRepeat(factory: StoreFactory) async throws {
        try await factory.run { store in
            let first = try await store.create(Self.new("h"), owner: Self.r1).lease
            try await store.release(nil, lease: first)
            let claimed = try #require(try await store.claim(Self.r2, limit: 10, only: "h").first).lease
            #expect(try await store.delete("h", run: "run"))
            // The same id again: its first token lies above every token the old run ever had, so a
            // write still retrying from the old run cannot land in the new one.
            let again = try await store.create(Self.new("h"), owner: Self.r1).lease
            #expect(again.token > claimed.token && claimed.token > first.token)
            await #expect(throws: StoreError.leaseLost("h")) {
                try await store.checkpoint(
                    Checkpoint(state: Self.state(1), log: [Self.record(0)], consumedInbox: ["start"]),
                    lease: Lease(handlerID: "h", replicaID: Self.r1, token: first.token))
            }
            #expect(try await store.handler("h")?.lastSequence == -1)
            #expect(try await store.pendingInbox("h").map(\.id) == ["start"])
        }
    }

    /// [pg-ha]: what a replica reads back after a database failover, and the sequence moved
    /// past tokens it saw (never back).
    @Test(
        "the failover check answers tokens and last sequences; advancing tokens only moves them up",
        arguments: StoreFactory.all)
    func failoverCheckAndAdvanceTokens(factory: StoreFactory) async throws {
        try await factory.run { store in
            let lease = try await store.create(Self.new("a"), owner: Self.r1).lease
            try await store.checkpoint(
                Checkpoint(state: Self.state(2), log: [Self.record(0), Self.record(1)], consumedInbox: ["start"]),
                lease: lease)
            let answer = try await store.failoverCheck(["a", "absent"])
            #expect(answer.handlers == ["a": FailoverCheckAnswer.Position(token: lease.token, lastSequence: 1)])
            #expect(answer.highestToken == lease.token)
            // Postgres says which node answered (the in-memory store has none).
            #expect((answer.node != nil) == (factory.name == "postgres"))
            try await store.advanceTokens(past: FencingToken(lease.token.rawValue + 100))
            try await store.advanceTokens(past: lease.token)  // never back
            #expect(try await store.failoverCheck([]).highestToken == FencingToken(lease.token.rawValue + 100))
            let next = try await store.create(Self.new("b"), owner: Self.r1).lease
            #expect(next.token.rawValue == lease.token.rawValue + 101)
        }
    }

    /// A handler purged by any replica is gone on purpose: the failover check says so (its tombstone, with
    /// the token it was deleted with), so a replica that had acknowledged it does not take its
    /// absence after a failover for a loss. A new run of the id is reported as existing.
    @Test("the failover check reports a purged handler's tombstone", arguments: StoreFactory.all)
    func failoverCheckReportsPurges(factory: StoreFactory) async throws {
        try await factory.run { store in
            let lease = try await store.create(Self.new("p"), owner: Self.r1).lease
            try await store.checkpoint(
                Checkpoint(state: Self.state(1), log: [Self.record(0)], consumedInbox: ["start"]), lease: lease)
            guard case .cancelled(let cancelled) = try await store.cancel("p") else {
                Issue.record("expected cancelled")
                return
            }
            #expect(cancelled.fencingToken > lease.token)
            #expect(try await store.failoverCheck(["p"]).purged.isEmpty)  // not purged yet
            #expect(try await store.delete("p", run: "run"))
            let answer = try await store.failoverCheck(["p", "never"])
            #expect(answer.handlers.isEmpty)
            #expect(
                answer.purged == [
                    "p": FailoverCheckAnswer.Position(
                        token: cancelled.fencingToken, lastSequence: cancelled.lastSequence)
                ])
            let again = try await store.create(Self.new("p"), owner: Self.r2).lease
            let afterRecreation = try await store.failoverCheck(["p"])
            #expect(afterRecreation.handlers["p"]?.token == again.token)
        }
    }

    /// D9: a finished handler's unconsumed inbox rows (an event accepted just before it finished)
    /// are consumed with it, so they neither count as pending nor keep showing up as claim
    /// candidates; the same for a cancelled one.
    @Test("finishing or cancelling a handler consumes what is left of its inbox", arguments: StoreFactory.all)
    func finishingConsumesLeftovers(factory: StoreFactory) async throws {
        try await factory.run { store in
            let lease = try await store.create(Self.new("done"), owner: Self.r1).lease
            _ = try await store.appendInbox("done", InboxEvent(id: "late", event: AnyEvent(type: "Tick", value: [:])))
            try await store.checkpoint(
                Checkpoint(
                    state: Self.state(1, status: .completed), log: [Self.record(0, "StopEvent", terminal: true)],
                    consumedInbox: ["start"]),
                lease: lease)
            #expect(try await store.pendingInbox("done").isEmpty)
            _ = try await store.create(Self.new("gone"), owner: Self.r1)
            _ = try await store.appendInbox("gone", InboxEvent(id: "late", event: AnyEvent(type: "Tick", value: [:])))
            _ = try await store.cancel("gone")
            #expect(try await store.pendingInbox("gone").isEmpty)
            #expect(try await store.pendingInbox(of: ["done", "gone"]).isEmpty)
            #expect(try await store.claim(Self.r2, limit: 10, only: nil).isEmpty)
        }
    }

    /// Retention: only finished handlers past the age go, oldest first, at most `limit` per call,
    /// with their log; running and hibernated handlers stay whatever their age.
    @Test("purging finished handlers keeps running and hibernated ones", arguments: StoreFactory.all)
    func purgeFinished(factory: StoreFactory) async throws {
        try await factory.run { store in
            for id in ["done-1", "done-2"] {
                let lease = try await store.create(Self.new(id), owner: Self.r1).lease
                try await store.checkpoint(
                    Checkpoint(
                        state: Self.state(1, status: .completed), log: [Self.record(0, "StopEvent", terminal: true)],
                        consumedInbox: ["start"]),
                    lease: lease)
            }
            _ = try await store.create(Self.new("running"), owner: Self.r1)
            let sleeper = try await store.create(Self.new("sleeping"), owner: Self.r1).lease
            #expect(
                try await store.hibernate(
                    Checkpoint(state: Self.state(1), log: [Self.record(0)], consumedInbox: ["start"]), wakeAt: nil,
                    lease: sleeper))
            // Finished only now: not past an hour's retention.
            #expect(try await store.purgeFinished(olderThan: .seconds(3600), limit: 10).isEmpty)
            // Past a zero retention: oldest first, one per call with limit 1.
            #expect(try await store.purgeFinished(olderThan: .zero, limit: 1) == ["done-1"])
            #expect(try await store.purgeFinished(olderThan: .zero, limit: 10) == ["done-2"])
            #expect(try await store.purgeFinished(olderThan: .zero, limit: 10).isEmpty)
            #expect(try await store.handler("done-1") == nil)
            #expect(try await store.events("done-2", after: -1, limit: 10).isEmpty)
            #expect(try await store.handler("running")?.status == .running)
            #expect(try await store.handler("sleeping")?.hibernated == true)
            #expect(try await store.events("sleeping", after: -1, limit: 10).count == 1)
            // A purged id starts clean: no log, inbox or lease history of the purged run.
            _ = try await store.create(Self.new("done-1"), owner: Self.r2)
            #expect(try await store.events("done-1", after: -1, limit: 10).isEmpty)
            #expect(try await store.pendingInbox("done-1").map(\.id) == ["start"])
            #expect(try await store.leaseHistory("done-1").map(\.kind) == [.created])
        }
    }

    /// Every ownership change is recorded with the replica and the token after it, in order:
    /// created, hibernated, reloaded (claimed while hibernated), voided (the registration lapsed),
    /// failed over (claimed from a lapsed owner), released, claimed, finished; cancelled.
    @Test("lease history records every ownership change", arguments: StoreFactory.all)
    func leaseHistory(factory: StoreFactory) async throws {
        try await factory.run { store in
            let created = try await store.create(Self.new("h"), owner: Self.r1).lease
            #expect(
                try await store.hibernate(
                    Checkpoint(state: Self.state(1), log: [Self.record(0)], consumedInbox: ["start"]), wakeAt: nil,
                    lease: created))
            _ = try await store.appendInbox("h", InboxEvent(id: "e", event: AnyEvent(type: "Tick", value: [:])))
            let reloadedClaim = try #require(try await store.claim(Self.r2, limit: 1, only: "h").first)
            #expect(reloadedClaim.acquired == .reloaded)
            let reloaded = reloadedClaim.lease
            try await store.release(nil, lease: reloaded)
            let claimedAgain = try #require(try await store.claim(Self.r1, limit: 1, only: "h").first)
            #expect(claimedAgain.acquired == .claimed)
            let claimed = claimedAgain.lease
            try await store.checkpoint(
                Checkpoint(
                    state: Self.state(2, status: .completed), log: [Self.record(1, "StopEvent", terminal: true)],
                    consumedInbox: ["e"]),
                lease: claimed)
            // The claim answers how each lease was acquired, as the history records it.
            #expect(try await store.create(Self.new("h2"), owner: Self.r1).acquired == .created)
            let history = try await store.leaseHistory("h")
            #expect(history.map(\.kind) == [.created, .hibernated, .reloaded, .released, .claimed, .finished])
            #expect(history.map(\.replica) == [Self.r1, Self.r1, Self.r2, Self.r2, Self.r1, Self.r1])
            #expect(
                history.map(\.token) == [
                    created.token, created.token, reloaded.token, reloaded.token, claimed.token, claimed.token,
                ])
            _ = try await store.create(Self.new("c"), owner: Self.r1)
            _ = try await store.cancel("c")
            let recent = try await store.recentLeaseChanges(limit: 2)
            #expect(recent.map(\.kind) == [.cancelled, .created])  // "c" was created after "h2"
            #expect(recent.map(\.handlerID) == ["c", "c"])
            #expect(try await store.delete("h", run: "run"))
            #expect(try await store.leaseHistory("h").isEmpty)
        }
    }
}
