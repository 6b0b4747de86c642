import Foundation
import LeaseholdStore

/// The lease keeper's decisions, as a value (postgres-nio's `PoolStateMachine` shape): events in —
/// a registration, a heartbeat, a renewal's answer with its send and receive instants and the
/// database node and time it names, a write starting or ending, a failover check's answer, a
/// reading of the clock — and actions out: renew excluding these leases, fence these handlers,
/// release those orphans, check the database, start over, register anew. It does no I/O and has no
/// clock: every instant is an argument (monotonic, `ReplicaClock.now`). `LeaseKeeper` performs
/// what it decides, one event at a time under its lock; `LeaseMachineTests` drive it alone.
///
/// What it decides, and the rule each decision keeps (the why is in `LeaseKeeper`'s files):
/// - may a write be tried: the last renewal *sent* less than `selfFenceAfter` ago, and the lease
///   not excluded for a stuck write (`mayWrite`);
/// - self-fencing: every running handler stops once that no longer holds (`selfFenceDue`);
/// - a renewal: which leases it leaves out (a write stuck over half a TTL), and from its answer
///   which handlers lost their lease, which leases are orphans, whether the database clock
///   stepped, whether the database node must be checked first (`LeaseMachine+Renewal.swift`);
/// - the failover check: when one starts, what its answer means, when refused writes are
///   forgotten (`LeaseMachine+FailoverCheck.swift`);
/// - the token reserve: handed out only while the database is trusted, discarded on any doubt.
struct LeaseMachine: Sendable {
    /// A handler hosted here, as the machine sees it at an event.
    struct Hosted: Sendable, Equatable {
        var lease: Lease
        /// Since when its lease must show in a renewal's answer; nil while it is not yet written.
        var heldSince: Duration?
        /// A stop was asked for (hibernate, hand-off, fence).
        var stopping: Bool
        /// Its runtime reached a final status.
        var finished: Bool

        init(lease: Lease, heldSince: Duration?, stopping: Bool = false, finished: Bool = false) {
            self.lease = lease
            self.heldSince = heldSince
            self.stopping = stopping
            self.finished = finished
        }

        var active: Bool { !stopping && !finished }
    }

    /// The handlers hosted here at an event: those live, and the ids being loaded.
    struct HostView: Sendable, Equatable {
        var live: [Hosted]
        var loading: Set<HandlerID> = []

        func isHosting(_ id: HandlerID) -> Bool { loading.contains(id) || live.contains { $0.lease.handlerID == id } }
    }

    let configuration: CoordinatorConfiguration

    /// Monotonic time at which the last successful renewal (or registration) was *sent*.
    var lastRenewal: Duration?
    /// Leases with a checkpoint in flight, and since when. Keyed by lease, not handler: an
    /// abandoned runtime's stuck write must not implicate a newer lease of the same handler.
    var writing: [Lease: Duration] = [:]
    /// Leases left out of renewal because their write was stuck: fenced here at once.
    var excluded: Set<Lease> = []
    /// Leases the last renewal returned that had no runtime here.
    var unrunLeases: Set<HandlerID> = []
    /// Send instants of the renewals in flight, by id.
    var renewalsInFlight: [Int: Duration] = [:]
    var nextRenewalID = 0
    /// Another process registered under this replica id: this one holds nothing and stops.
    var superseded = false
    /// The last renewal's database time, with the instants it was sent and answered.
    var lastReading: ClockReading?
    /// The database node that answered last, the one whose history this replica has checked, and
    /// one waiting for its check.
    var node: DatabaseNode?
    var verifiedNode: DatabaseNode?
    var pendingNode: DatabaseNode?
    /// What the database acknowledged to this replica within `acknowledgementWindow`, and the
    /// highest token it ever granted here.
    var acknowledged: FailoverCheckMemory
    var highestToken = FencingToken(0)
    /// Tokens reserved for handlers created by their first checkpoint, and the epoch they belong
    /// to: discarding them starts a new epoch, so a block reserved before is not used either.
    var reservedTokens: [FencingToken] = []
    var tokenEpoch = 0
    /// The replica starts over (another database, or one that went back in time): no renewals.
    var startingOver = false
    /// A failover check runs (one at a time).
    var checkingDatabase = false
    /// A write was refused (or a reserved token found ahead): the next renewal checks the node.
    var suspected = false
    /// Failover checks started, numbered from 1.
    var checksStarted = 0
    /// Leases whose refused writes wait for the check numbered with them to pass before what was
    /// acknowledged of them is forgotten.
    var forgetAfterCheck: [(Lease, Int)] = []

    /// Counts, for `/cluster`, metrics and tests.
    var selfFences = 0
    var rejectedWrites = 0
    var clockSteps = 0
    var failedChecks = 0
    var databaseFailovers = 0
    var checksOnSuspicion = 0

    /// A renewal's database time between the local instants it was sent and answered.
    struct ClockReading: Sendable, Equatable {
        var sent: Duration
        var received: Duration
        var database: Date
    }

    init(configuration: CoordinatorConfiguration, now: Duration) {
        self.configuration = configuration
        acknowledged = FailoverCheckMemory(
            window: configuration.acknowledgementWindow, limit: CoordinatorConfiguration.acknowledgementLimit, now: now)
    }

    // MARK: - Registration

    /// A registration sent at `sent` succeeded, answered by `node` (nil for a store that names
    /// none). The first node met is trusted at once (nothing was acknowledged yet, and claims
    /// start after the registration); another than the verified one waits for its check.
    /// - Returns: the node to trust now, if any.
    mutating func registered(sent: Duration, node: DatabaseNode?) -> DatabaseNode? {
        lastRenewal = sent
        guard let node else { return nil }
        self.node = node
        guard let verified = verifiedNode else {
            verifiedNode = node
            return node
        }
        if !Self.sameHistory(verified, node) {
            pendingNode = node
            discardReservedTokens()
        }
        return nil
    }

    // MARK: - May I write?

    /// The last renewal was sent less than `selfFenceAfter` ago (always, with self-fencing off).
    func leasesProvable(at now: Duration) -> Bool {
        guard configuration.selfFencing else { return true }
        guard let lastRenewal else { return false }
        return now - lastRenewal < configuration.selfFenceAfter
    }

    /// Whether a write for `lease` may be attempted now. The store still checks the token.
    func mayWrite(_ lease: Lease, at now: Duration) -> Bool {
        leasesProvable(at: now) && !excluded.contains(lease)
    }

    /// Registered and renewed within one TTL (readiness).
    func isCurrent(at now: Duration) -> Bool {
        guard let lastRenewal else { return false }
        return now - lastRenewal < configuration.leaseTTL
    }

    mutating func writeStarted(_ lease: Lease, at now: Duration) { writing[lease] = now }
    mutating func writeEnded(_ lease: Lease) { writing[lease] = nil }

    /// The handlers to stop because the leases can no longer be proven (counted as one
    /// self-fence when there are any): by the time anyone else may claim them, one TTL after the
    /// last renewal was sent, nothing runs here.
    mutating func selfFenceDue(at now: Duration, host: HostView) -> [Lease] {
        guard !leasesProvable(at: now) else { return [] }
        let fenced = host.live.filter { !$0.stopping }.map(\.lease)
        if !fenced.isEmpty { selfFences += 1 }
        return fenced
    }

    // MARK: - Tokens for handlers created by their first checkpoint

    /// Not starting over, not checking a database that failed over, none waiting for its check.
    var trustsDatabase: Bool { !startingOver && !checkingDatabase && pendingNode == nil }

    /// What `takeToken` may do now.
    enum TokenGrant: Equatable {
        /// No token may be handed out (leases unprovable, or the database not trusted).
        case refused
        case token(FencingToken)
        /// The reserve is empty: reserve a block, then `reserved(_:epoch:)`.
        case reserve(epoch: Int)
    }

    mutating func takeToken(at now: Duration) -> TokenGrant {
        guard leasesProvable(at: now), trustsDatabase else { return .refused }
        if let token = reservedTokens.popLast() { return .token(token) }
        return .reserve(epoch: tokenEpoch)
    }

    /// A block reserved in `epoch`: one token of it, the rest kept; nil when the database lost
    /// this replica's trust meanwhile (the block is not used).
    mutating func reserved(_ block: [FencingToken], epoch: Int) -> FencingToken? {
        guard tokenEpoch == epoch, trustsDatabase, let highest = block.max() else { return nil }
        highestToken = max(highestToken, highest)
        var rest = block.sorted(by: >)
        let token = rest.removeLast()
        reservedTokens.append(contentsOf: rest)
        return token
    }

    mutating func discardReservedTokens() {
        reservedTokens = []
        tokenEpoch += 1
    }

    // MARK: - What this replica was told

    /// A lease granted to this replica (created or claimed), with the last sequence it carried.
    mutating func granted(_ lease: Lease, lastSequence: Int64, at now: Duration) {
        highestToken = max(highestToken, lease.token)
        acknowledge(lease, lastSequence: lastSequence, at: now)
    }

    /// A checkpoint of `lease` committed up to `lastSequence`.
    mutating func acknowledge(_ lease: Lease, lastSequence: Int64, at now: Duration) {
        acknowledged.record(
            lease.handlerID, FailoverCheckAnswer.Position(token: lease.token, lastSequence: lastSequence), at: now)
    }

    static func sameHistory(_ a: DatabaseNode, _ b: DatabaseNode) -> Bool {
        a.systemIdentifier == b.systemIdentifier && a.timeline == b.timeline
    }
}
