import Foundation
import LeaseholdStore

/// The lease machine's renewals: when one may be sent, what it leaves out, and what its answer
/// tells (a clock that stepped, a database node to check, leases lost, orphans).
extension LeaseMachine {
    static let maxRenewalsInFlight = 3
    static let maxRenewalsOutstanding = 32

    /// A heartbeat: at most `maxRenewalsInFlight` recent renewals at once. One older than two TTLs
    /// no longer counts (it proves nothing any more, and a partition once left three such
    /// renewals hanging for good, which stopped every later one), up to `maxRenewalsOutstanding`
    /// in all, which bounds what requests that never return can hold.
    /// - Returns: the new renewal's id, or nil when it must wait.
    mutating func admitRenewal(at now: Duration) -> Int? {
        let recent = renewalsInFlight.values.filter { now - $0 < configuration.leaseTTL * 2 }
        guard recent.count < Self.maxRenewalsInFlight, renewalsInFlight.count < Self.maxRenewalsOutstanding else {
            return nil
        }
        let id = nextRenewalID
        nextRenewalID += 1
        renewalsInFlight[id] = now
        return id
    }

    mutating func renewalEnded(_ id: Int) { renewalsInFlight[id] = nil }

    /// What to do before sending a renewal.
    enum RenewalStart: Equatable {
        /// Send nothing: the replica starts over, or a node change is being checked.
        case skip
        /// A node whose earlier check failed: check it again before renewing anything.
        case check(Check)
        /// Renew, leaving out `excluded` (writes stuck over half a TTL); stop `fence` first (the
        /// same leases, when self-fencing is on): two replicas must never run them at once.
        case send(excluded: [Lease], fence: [Lease])
    }

    mutating func startRenewal(at sent: Duration, host: HostView) -> RenewalStart {
        guard !startingOver else { return .skip }
        if let node = pendingNode, let verified = verifiedNode, !checkingDatabase {
            return .check(beginCheck(of: node, against: verified))
        }
        // A check of a node change in flight: no renewal meanwhile. (A check of the verified node
        // on a suspicion does not hold renewals up.)
        if checkingDatabase, pendingNode != nil { return .skip }
        // A write not returned within half a TTL is stuck (a dead connection that never errors).
        // Only a lease this replica still runs the handler under counts: a stuck write of a runtime
        // already fenced concerns a lease that is gone, not the handler's current one.
        let stuck =
            configuration.stuckWriteFence
            ? writing.filter { sent - $0.value > configuration.leaseTTL / 2 }.map(\.key) : []
        let hosted = Set(host.live.map(\.lease))
        let excludedNow = stuck.filter { hosted.contains($0) }.sorted { $0.handlerID.rawValue < $1.handlerID.rawValue }
        excluded.formUnion(excludedNow)
        guard !excludedNow.isEmpty, configuration.selfFencing else { return .send(excluded: excludedNow, fence: []) }
        // A self-fence like the one on an old renewal, counted as one (whichever of the two comes
        // first after a partition depends on where the heartbeat falls).
        selfFences += 1
        return .send(excluded: excludedNow, fence: excludedNow)
    }

    /// The first reading of a renewal's answer.
    enum RenewalVerdict: Equatable {
        /// The database clock jumped ahead of this replica's: leases judged by it expire early
        /// while self-fencing still trusts them. Fence every handler here, register anew, then
        /// fence what was launched before that registration.
        case clockStepped(database: Duration, replica: Duration)
        /// Another node answered (or the database is suspected): check it; act on the renewal
        /// (`applyRenewal`) only if the check passes.
        case check(Check)
        /// A check is running: this answer proves nothing.
        case ignore
        /// Act on it (`applyRenewal`), trusting `trust` first (the first node met), logging a
        /// database clock that went back (`clockWentBack`: harmless, leases only last longer).
        case apply(trust: DatabaseNode?, clockWentBack: ClockStep)
    }

    /// A renewal sent at `sent` was answered at `received`.
    mutating func renewalAnswered(sent: Duration, received: Duration, renewal: Renewal) -> RenewalVerdict {
        var wentBack = ClockStep.none
        if let time = renewal.databaseTime {
            switch clockStep(ClockReading(sent: sent, received: received, database: time)) {
            case .none: break
            case .back(let database, let replica): wentBack = .back(database: database, replica: replica)
            case .forward(let database, let replica):
                clockSteps += 1
                lastReading = nil
                lastRenewal = nil
                return .clockStepped(database: database, replica: replica)
            }
        }
        var trust: DatabaseNode?
        if let node = renewal.database {
            switch nodeVerdict(node) {
            case .same: break
            case .first(let node): trust = node
            case .busy: return .ignore
            case .check(let check): return .check(check)
            }
        }
        return .apply(trust: trust, clockWentBack: wentBack)
    }

    /// What a renewal's answer changes once it may be acted on.
    struct Applied: Equatable {
        /// Handlers whose lease the answer no longer shows: stop them (counted as refused writes).
        var lost: [Lease] = []
        /// Leases held here with no runtime for two renewals in a row: give them back.
        var orphans: [HandlerID: FencingToken] = [:]
        /// The renewal was sent more than a TTL after the one before.
        var lateBy: Duration?
    }

    /// Acts on a renewal sent at `sent` that showed `held`, with what is hosted here now.
    mutating func applyRenewal(sent: Duration, held: [HandlerID: FencingToken], host: HostView) -> Applied {
        var applied = Applied()
        if let last = lastRenewal, sent - last > configuration.leaseTTL { applied.lateBy = sent - last }
        // Renewals may complete out of order: the newest send instant proves the most.
        lastRenewal = max(lastRenewal ?? sent, sent)
        excluded = excluded.filter { held[$0.handlerID] == $0.token }
        // A lease held with no runtime here is an orphan only when two renewals in a row saw it
        // so: one acquired just before this renewal may not have started its runtime yet.
        let unrun = held.filter { !host.isHosting($0.key) }
        applied.orphans = unrun.filter { unrunLeases.contains($0.key) }
        unrunLeases = Set(unrun.keys)
        // Only handlers taken before the renewal was sent can be missing from its answer because
        // their lease is gone; one claimed or created meanwhile may simply be newer, and one that
        // finished or is being stopped (hibernated, handed off) gave it up; one not yet written
        // (a `run`'s first pass), or written after the renewal was sent, has no lease it must show.
        applied.lost = host.live.filter { hosted in
            guard let since = hosted.heldSince, since < sent else { return false }
            return held[hosted.lease.handlerID] != hosted.lease.token && hosted.active
        }.map(\.lease)
        rejectedWrites += applied.lost.count
        return applied
    }

    /// A renewal the store refused because another process registered under this replica id:
    /// this one holds nothing from now on.
    mutating func superseded(host: HostView) -> [Lease] {
        superseded = true
        return host.live.map(\.lease)
    }

    // MARK: - Clock steps

    enum ClockStep: Equatable {
        case none
        case forward(database: Duration, replica: Duration)
        case back(database: Duration, replica: Duration)
    }

    /// Compares the database's elapsed time between two renewals with this replica's. Each
    /// database reading lies between its renewal's send and answer, so without a step the two
    /// differ by at most the renewals' round trips. A forward step beyond that plus
    /// `clockStepMargin` makes leases expire early by the database while self-fencing still
    /// trusts them. A backward step only makes them last longer in real time: logged.
    mutating func clockStep(_ reading: ClockReading) -> ClockStep {
        let previous = lastReading
        lastReading = reading
        // A comparison across a long gap without renewals would add up ordinary drift.
        guard let previous, reading.sent - previous.sent <= configuration.leaseTTL * 2 else { return .none }
        let database = Duration.milliseconds(
            Int64((reading.database.timeIntervalSince(previous.database) * 1000).rounded()))
        let local = reading.sent - previous.sent
        let divergence = database - local
        let tolerance = configuration.clockStepMargin
        if divergence < .zero - (previous.received - previous.sent) - tolerance {
            return .back(database: database, replica: local)
        }
        guard divergence > (reading.received - reading.sent) + tolerance else { return .none }
        return .forward(database: database, replica: local)
    }
}
