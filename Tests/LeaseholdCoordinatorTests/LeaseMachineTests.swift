import Foundation
import LeaseholdStore
import Testing

@testable import LeaseholdCoordinator

/// The lease keeper's decisions alone (`LeaseMachine`): no store, no tasks, no clock of its own —
/// every instant is an argument, so each rule is pinned at its exact boundary.
@Suite("Lease machine")
struct LeaseMachineTests {
    /// TTL 6 s: self-fencing after 4.8 s, clock-step margin 1.2 s.
    static let configuration = CoordinatorConfiguration(replicaID: "r1", address: "a", leaseTTL: .seconds(6))
    static let nodeA = DatabaseNode(systemIdentifier: "sys", timeline: 1, address: "a", synchronousStandbys: nil)
    static let nodeB = DatabaseNode(systemIdentifier: "sys", timeline: 2, address: "b", synchronousStandbys: nil)
    static let other = DatabaseNode(systemIdentifier: "other", timeline: 1, address: "c", synchronousStandbys: nil)

    static func lease(_ id: HandlerID, _ token: Int64) -> Lease {
        Lease(handlerID: id, replicaID: "r1", token: FencingToken(token))
    }

    static func s(_ seconds: Double) -> Duration { .milliseconds(Int64(seconds * 1000)) }

    /// Registered at 0 on node A.
    static func registered(selfFencing: Bool = true) -> LeaseMachine {
        var configuration = configuration
        configuration.selfFencing = selfFencing
        var machine = LeaseMachine(configuration: configuration, now: .zero)
        #expect(machine.registered(sent: .zero, node: nodeA) == nodeA)
        return machine
    }

    static func renewal(_ held: [HandlerID: Int64], at time: Date? = nil, node: DatabaseNode? = nodeA) -> Renewal {
        Renewal(held: held.mapValues { FencingToken($0) }, databaseTime: time, database: node)
    }

    /// Sends a renewal at `sent`, answered at `received`, and acts on it as the keeper does.
    @discardableResult
    static func renew(
        _ machine: inout LeaseMachine, sent: Duration, received: Duration? = nil, _ renewal: Renewal,
        host: LeaseMachine.HostView = .init(live: [])
    ) -> LeaseMachine.Applied? {
        guard case .send = machine.startRenewal(at: sent, host: host) else { return nil }
        guard case .apply = machine.renewalAnswered(sent: sent, received: received ?? sent, renewal: renewal) else {
            return nil
        }
        return machine.applyRenewal(sent: sent, held: renewal.held, host: host)
    }

    // MARK: - Self-fencing

    @Test("self-fencing at exactly selfFenceAfter past the last renewal sent; a renewal moves that point")
    func selfFencingBoundary() {
        var machine = Self.registered()
        let a = LeaseMachine.Hosted(lease: Self.lease("a", 1), heldSince: .zero)
        let host = LeaseMachine.HostView(live: [a])
        #expect(machine.leasesProvable(at: Self.s(4.799)))
        #expect(machine.selfFenceDue(at: Self.s(4.799), host: host).isEmpty)
        #expect(!machine.leasesProvable(at: Self.s(4.8)))
        #expect(machine.selfFenceDue(at: Self.s(4.8), host: host) == [a.lease])
        #expect(machine.selfFences == 1)
        // A renewal sent at 3 s (answered late) proves the leases until 7.8 s.
        Self.renew(&machine, sent: Self.s(3), received: Self.s(5), Self.renewal(["a": 1]), host: host)
        #expect(machine.mayWrite(a.lease, at: Self.s(7.799)))
        #expect(!machine.mayWrite(a.lease, at: Self.s(7.8)))
    }

    @Test("a handler already stopping is not fenced again; with self-fencing off nothing is")
    func selfFencingSkips() {
        var machine = Self.registered()
        let stopping = LeaseMachine.Hosted(lease: Self.lease("a", 1), heldSince: .zero, stopping: true)
        #expect(machine.selfFenceDue(at: Self.s(10), host: .init(live: [stopping])).isEmpty)
        #expect(machine.selfFences == 0)
        var off = Self.registered(selfFencing: false)
        #expect(off.leasesProvable(at: Self.s(1000)))
        #expect(off.selfFenceDue(at: Self.s(1000), host: .init(live: [stopping])).isEmpty)
    }

    @Test("renewals answered out of order: the newest send instant proves the most")
    func outOfOrderRenewals() {
        var machine = Self.registered()
        Self.renew(&machine, sent: Self.s(4), Self.renewal([:]))
        Self.renew(&machine, sent: Self.s(2), received: Self.s(5), Self.renewal([:]))
        #expect(machine.lastRenewal == Self.s(4))
    }

    // MARK: - Admission

    @Test("three recent renewals in flight hold the next; one older than two TTLs no longer counts; 32 at most")
    func admission() {
        var machine = Self.registered()
        #expect(machine.admitRenewal(at: .zero) == 0)
        #expect(machine.admitRenewal(at: Self.s(1)) == 1)
        #expect(machine.admitRenewal(at: Self.s(2)) == 2)
        #expect(machine.admitRenewal(at: Self.s(3)) == nil)
        #expect(machine.admitRenewal(at: Self.s(11.999)) == nil)
        #expect(machine.admitRenewal(at: Self.s(12)) == 3)  // the first is two TTLs old
        machine.renewalEnded(1)
        #expect(machine.admitRenewal(at: Self.s(12)) == 4)
        var many = Self.registered()
        for i in 0..<32 { #expect(many.admitRenewal(at: Self.s(Double(i) * 20)) != nil) }
        #expect(many.admitRenewal(at: Self.s(10_000)) == nil)
    }

    // MARK: - Stuck writes

    @Test("a write stuck over half a TTL: its lease is left out of renewal and its handler fenced, once")
    func stuckWrite() {
        var machine = Self.registered()
        let a = Self.lease("a", 1)
        let host = LeaseMachine.HostView(live: [.init(lease: a, heldSince: .zero)])
        machine.writeStarted(a, at: Self.s(1))
        #expect(machine.startRenewal(at: Self.s(4), host: host) == .send(excluded: [], fence: []))
        #expect(machine.startRenewal(at: Self.s(4.001), host: host) == .send(excluded: [a], fence: [a]))
        #expect(machine.selfFences == 1)
        #expect(!machine.mayWrite(a, at: Self.s(4.001)))
        // A renewal showing another token for it ends the exclusion (the lease is gone anyway).
        _ = machine.renewalAnswered(sent: Self.s(4.001), received: Self.s(4.002), renewal: Self.renewal(["a": 2]))
        _ = machine.applyRenewal(sent: Self.s(4.001), held: ["a": FencingToken(2)], host: host)
        #expect(machine.excluded.isEmpty)
    }

    @Test("a stuck write of a lease no longer hosted is ignored; with self-fencing off it is excluded only")
    func stuckWriteOfGoneLease() {
        var machine = Self.registered()
        machine.writeStarted(Self.lease("a", 1), at: .zero)
        let newer = LeaseMachine.HostView(live: [.init(lease: Self.lease("a", 2), heldSince: .zero)])
        #expect(machine.startRenewal(at: Self.s(5), host: newer) == .send(excluded: [], fence: []))
        var off = Self.registered(selfFencing: false)
        let a = Self.lease("a", 1)
        off.writeStarted(a, at: .zero)
        #expect(
            off.startRenewal(at: Self.s(5), host: .init(live: [.init(lease: a, heldSince: .zero)]))
                == .send(excluded: [a], fence: []))
        #expect(off.selfFences == 0)
    }

    // MARK: - What an answer tells

    @Test("lost: only a running handler held before the renewal was sent, missing from its answer")
    func lostLeases() {
        var machine = Self.registered()
        let host = LeaseMachine.HostView(live: [
            .init(lease: Self.lease("held", 1), heldSince: .zero),
            .init(lease: Self.lease("gone", 1), heldSince: .zero),
            .init(lease: Self.lease("moved", 1), heldSince: .zero),
            .init(lease: Self.lease("newer", 1), heldSince: Self.s(2)),
            .init(lease: Self.lease("unwritten", 1), heldSince: nil),
            .init(lease: Self.lease("stopping", 1), heldSince: .zero, stopping: true),
            .init(lease: Self.lease("finished", 1), heldSince: .zero, finished: true),
        ])
        let applied = Self.renew(&machine, sent: Self.s(2), Self.renewal(["held": 1, "moved": 2]), host: host)
        #expect(applied?.lost.map(\.handlerID).sorted { $0.rawValue < $1.rawValue } == ["gone", "moved"])
        #expect(machine.rejectedWrites == 2)
    }

    @Test("a lease held with no runtime here is an orphan at the second renewal in a row, not the first")
    func orphans() {
        var machine = Self.registered()
        let loading = LeaseMachine.HostView(live: [], loading: ["b"])
        #expect(Self.renew(&machine, sent: Self.s(1), Self.renewal(["a": 1, "b": 1]), host: loading)?.orphans == [:])
        #expect(
            Self.renew(&machine, sent: Self.s(2), Self.renewal(["a": 1, "b": 1]), host: loading)?.orphans == [
                "a": FencingToken(1)
            ])
        // Launched meanwhile: no longer an orphan.
        let live = LeaseMachine.HostView(live: [.init(lease: Self.lease("a", 1), heldSince: .zero)])
        #expect(Self.renew(&machine, sent: Self.s(3), Self.renewal(["a": 1]), host: live)?.orphans == [:])
    }

    @Test("a renewal sent more than a TTL after the last one is reported late")
    func lateRenewal() {
        var machine = Self.registered()
        #expect(Self.renew(&machine, sent: Self.s(6), Self.renewal([:]))?.lateBy == nil)
        #expect(Self.renew(&machine, sent: Self.s(12.001), Self.renewal([:]))?.lateBy == Self.s(6.001))
    }

    @Test("superseded: every lease hosted is given up")
    func superseded() {
        var machine = Self.registered()
        let host = LeaseMachine.HostView(live: [.init(lease: Self.lease("a", 1), heldSince: .zero)])
        #expect(machine.superseded(host: host) == [Self.lease("a", 1)])
        #expect(machine.superseded)
    }

    // MARK: - Clock steps

    @Test("the database clock a margin plus a round trip ahead is a step: leases unprovable at once")
    func clockStepForward() {
        var machine = Self.registered()
        let t0 = Date(timeIntervalSince1970: 1_000)
        #expect(Self.renew(&machine, sent: .zero, received: Self.s(0.1), Self.renewal([:], at: t0)) != nil)
        // 2 s here, 2 + 1.2 + 0.1 (round trip) s there: within.
        let within = machine.renewalAnswered(
            sent: Self.s(2), received: Self.s(2.1), renewal: Self.renewal([:], at: t0 + 3.3))
        #expect(within == .apply(trust: nil, clockWentBack: .none))
        _ = machine.applyRenewal(sent: Self.s(2), held: [:], host: .init(live: []))
        // 2 s later here, 3.302 s there: a step.
        let stepped = machine.renewalAnswered(
            sent: Self.s(4), received: Self.s(4.1), renewal: Self.renewal([:], at: t0 + 3.3 + 3.302))
        #expect(stepped == .clockStepped(database: Self.s(3.302), replica: Self.s(2)))
        #expect(machine.clockSteps == 1)
        #expect(!machine.leasesProvable(at: Self.s(4.1)))
    }

    @Test("a database clock that went back is only reported; a gap over two TTLs compares nothing")
    func clockStepBackAndGap() {
        var machine = Self.registered()
        let t0 = Date(timeIntervalSince1970: 1_000)
        Self.renew(&machine, sent: .zero, received: Self.s(0.1), Self.renewal([:], at: t0))
        let back = machine.renewalAnswered(
            sent: Self.s(2), received: Self.s(2.1), renewal: Self.renewal([:], at: t0 + 0.5))
        #expect(back == .apply(trust: nil, clockWentBack: .back(database: Self.s(0.5), replica: Self.s(2))))
        let gap = machine.renewalAnswered(
            sent: Self.s(14.1), received: Self.s(14.2), renewal: Self.renewal([:], at: t0 + 100))
        #expect(gap == .apply(trust: nil, clockWentBack: .none))
    }

    // MARK: - The database node

    @Test("a node change is checked before its renewal counts; renewals meanwhile prove nothing")
    func nodeChange() {
        var machine = Self.registered()
        machine.reservedTokens = [FencingToken(9)]
        guard
            case .check(let check) = machine.renewalAnswered(
                sent: Self.s(1), received: Self.s(1), renewal: Self.renewal([:], node: Self.nodeB))
        else {
            Issue.record("no check")
            return
        }
        #expect(check == .init(node: Self.nodeB, verified: Self.nodeA, number: 1))
        #expect(machine.reservedTokens.isEmpty)
        #expect(machine.takeToken(at: Self.s(1)) == .refused)
        #expect(
            machine.renewalAnswered(sent: Self.s(2), received: Self.s(2), renewal: Self.renewal([:], node: Self.nodeB))
                == .ignore)
        #expect(machine.startRenewal(at: Self.s(2), host: .init(live: [])) == .skip)
        // Nothing lost: B is trusted, renewals count again.
        let outcome = machine.checkAnswered(
            check, positions: [:], highest: FencingToken(0),
            answer: FailoverCheckAnswer(highestToken: FencingToken(5), handlers: [:]))
        #expect(outcome == .kept(failover: true, positions: 0))
        machine.checkEnded(check.number, refused: outcome.refusesRenewal)
        #expect(machine.verifiedNode == Self.nodeB)
        #expect(
            machine.renewalAnswered(sent: Self.s(3), received: Self.s(3), renewal: Self.renewal([:], node: Self.nodeB))
                == .apply(trust: nil, clockWentBack: .none))
    }

    @Test("a check that could not be read leaves the node pending: the next renewal checks it first")
    func unreadableCheckIsRetried() {
        var machine = Self.registered()
        guard
            case .check(let check) = machine.renewalAnswered(
                sent: Self.s(1), received: Self.s(1), renewal: Self.renewal([:], node: Self.nodeB))
        else {
            Issue.record("no check")
            return
        }
        let outcome = machine.checkAnswered(check, positions: [:], highest: FencingToken(0), answer: nil)
        #expect(outcome == .unreadable)
        machine.checkEnded(check.number, refused: true)
        #expect(
            machine.startRenewal(at: Self.s(2), host: .init(live: []))
                == .check(.init(node: Self.nodeB, verified: Self.nodeA, number: 2)))
    }

    @Test("a check answered by a newer timeline checks that one next")
    func answeredElsewhere() {
        var machine = Self.registered()
        let check = machine.beginCheck(of: Self.nodeB, against: Self.nodeA)
        var answer = FailoverCheckAnswer(highestToken: FencingToken(5), handlers: [:])
        answer.node = (systemIdentifier: "sys", timeline: 3)
        #expect(
            machine.checkAnswered(check, positions: [:], highest: FencingToken(0), answer: answer)
                == .answeredElsewhere(timeline: 3, newer: true))
        #expect(machine.pendingNode?.timeline == 3)
    }

    @Test("a position behind what was acknowledged: lost; the replica stops everything and starts over")
    func lostWrites() {
        var machine = Self.registered()
        machine.granted(Self.lease("a", 4), lastSequence: 7, at: Self.s(1))
        machine.reservedTokens = [FencingToken(9)]
        let check = machine.beginCheck(of: Self.nodeB, against: Self.nodeA)
        guard case .read(let positions, let highest) = machine.planCheck(check, at: Self.s(2)) else {
            Issue.record("expected a read")
            return
        }
        #expect(highest == FencingToken(4))
        let answer = FailoverCheckAnswer(
            highestToken: FencingToken(4),
            handlers: ["a": .init(token: FencingToken(4), lastSequence: 5)])
        guard
            case .lost(let missing, true, FencingToken(4)) = machine.checkAnswered(
                check, positions: positions, highest: highest, answer: answer)
        else {
            Issue.record("expected lost")
            return
        }
        #expect(missing.count == 1)
        #expect(machine.failedChecks == 1)
        #expect(!machine.leasesProvable(at: Self.s(2)))
        #expect(machine.reservedTokens.isEmpty)
        #expect(machine.startRenewal(at: Self.s(2), host: .init(live: [])) == .skip)
        machine.checkEnded(check.number, refused: true)
        machine.startedOver()
        #expect(machine.restartedAfterLoss(on: Self.nodeB, at: Self.s(9)) == Self.nodeB)
        #expect(machine.acknowledged.count == 0)
    }

    @Test("another system identifier is another database: no read, stop and start over")
    func anotherDatabase() {
        var machine = Self.registered()
        machine.granted(Self.lease("a", 4), lastSequence: 0, at: .zero)
        let check = machine.beginCheck(of: Self.other, against: Self.nodeA)
        #expect(machine.planCheck(check, at: .zero) == .anotherDatabase(highest: FencingToken(4)))
        #expect(machine.startingOver)
        #expect(machine.replaced(by: Self.other, at: .zero) == Self.other)
        #expect(machine.highestToken == FencingToken(0))
    }

    @Test("a refused write is forgotten only after a check that started after it passed")
    func forgetAfterCheck() {
        var machine = Self.registered()
        let a = Self.lease("a", 1)
        machine.granted(a, lastSequence: 3, at: .zero)
        let running = machine.beginCheck(of: Self.nodeA, against: Self.nodeA)  // number 1
        let checkDue = machine.refused([a])  // waits for check 2
        #expect(checkDue)
        #expect(machine.suspected)
        machine.checkEnded(running.number, refused: false)
        #expect(machine.acknowledged[a.handlerID] != nil)
        guard
            case .check(let next) = machine.renewalAnswered(
                sent: Self.s(1), received: Self.s(1), renewal: Self.renewal([:]))
        else {
            Issue.record("a suspicion checks the verified node")
            return
        }
        machine.checkEnded(next.number, refused: true)  // failed: kept
        #expect(machine.acknowledged[a.handlerID] != nil)
        #expect(machine.refused([]) == false)
        machine.suspect()
        guard
            case .check(let third) = machine.renewalAnswered(
                sent: Self.s(2), received: Self.s(2), renewal: Self.renewal([:]))
        else {
            Issue.record("no check")
            return
        }
        machine.checkEnded(third.number, refused: false)
        #expect(machine.acknowledged[a.handlerID] == nil)
        // A store that names no node is never checked: forgotten at once.
        var unnamed = LeaseMachine(configuration: Self.configuration, now: .zero)
        _ = unnamed.registered(sent: .zero, node: nil)
        unnamed.granted(a, lastSequence: 3, at: .zero)
        let unnamedCheckDue = unnamed.refused([a])
        #expect(!unnamedCheckDue)
        #expect(unnamed.acknowledged[a.handlerID] == nil)
    }

    // MARK: - Tokens

    @Test("reserved tokens: handed out only while provable and trusted; a block from before a doubt is not used")
    func tokens() {
        var machine = Self.registered()
        guard case .reserve(let epoch) = machine.takeToken(at: Self.s(1)) else {
            Issue.record("expected a reservation")
            return
        }
        #expect(
            machine.reserved([FencingToken(12), FencingToken(10), FencingToken(11)], epoch: epoch) == FencingToken(10))
        #expect(machine.highestToken == FencingToken(12))
        #expect(machine.takeToken(at: Self.s(1)) == .token(FencingToken(11)))
        #expect(machine.takeToken(at: Self.s(4.8)) == .refused)
        machine.discardReservedTokens()
        #expect(machine.reserved([FencingToken(20)], epoch: epoch) == nil)
    }
}
