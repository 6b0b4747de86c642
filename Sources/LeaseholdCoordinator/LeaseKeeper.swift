import CoreMetrics
import Foundation
import LeaseholdEngine
import LeaseholdKit
import LeaseholdRuntime
import LeaseholdStore
import Logging
import Synchronization

/// Where the replica decides whether it may still write for a lease: registration, renewal,
/// lost-lease detection, stuck writes and self-fencing.
///
/// The database is the authority (every write is conditional on token, owner, lease cap and a
/// current registration; see `HandlerStore`); this part keeps the replica from even trying once
/// it cannot prove a lease, and stops every handler whose lease is gone before another replica
/// can claim it. Fencing on the replica side is checked here and nowhere else: `mayWrite(_:)`
/// before every checkpoint, `renewOnce(host:)` after every renewal (with the clock-step check),
/// `selfFenceIfNeeded(host:)` on its own short period.
///
/// Leases assume bounded clock drift and no clock steps (as etcd's and Temporal's do): expiry is
/// judged by the database's clock, self-fencing by this replica's monotonic clock. Each renewal
/// compares the two; a step beyond `clockStepMargin` fences every handler here and registers anew.
/// Each renewal also names the database node that answered: a failover of the database itself is
/// checked against what this replica had acknowledged (`LeaseKeeper+FailoverCheck.swift`).
final class LeaseKeeper: ReplicaPart, Sendable {
    struct State {
        /// Monotonic time at which the last successful renewal was *sent*.
        var lastRenewal: Duration?
        /// Leases with a checkpoint in flight, and since when (monotonic). Keyed by lease, not
        /// handler: an abandoned runtime's stuck write must not implicate a newer lease of the same
        /// handler on this replica.
        var writing: [Lease: Duration] = [:]
        /// Leases left out of renewal because their write was stuck: fenced here at once.
        var excluded: Set<Lease> = []
        /// Leases the last renewal returned that had no runtime here.
        var unrunLeases: Set<HandlerID> = []
        /// Send instants (monotonic) of the renewals in flight, by id.
        var renewalsInFlight: [Int: Duration] = [:]
        var nextRenewalID = 0
        /// Orphaned leases waiting for `runOrphanReleases`.
        var orphans: [HandlerID: FencingToken] = [:]
        var selfFences = 0
        var rejectedWrites = 0
        /// Another process registered under this replica id: this one holds nothing and stops.
        var superseded = false
        /// The last renewal's database time, with the monotonic times it was sent and answered.
        var lastReading: ClockReading?
        var clockSteps = 0
        /// The database node that answered the last renewal, the one whose history this replica
        /// has checked, and one waiting for its check (see `LeaseKeeper+FailoverCheck`).
        var node: DatabaseNode?
        var verifiedNode: DatabaseNode?
        var pendingNode: DatabaseNode?
        /// What the database acknowledged to this replica within `acknowledgementWindow`: each
        /// handler's token and last durable sequence; and the highest token it ever granted here.
        var acknowledged: FailoverCheckMemory
        var highestToken = FencingToken(0)
        /// Tokens reserved for handlers created by their first checkpoint (`takeToken`), and the
        /// epoch they belong to: starting over discards them.
        var reservedTokens: [FencingToken] = []
        var tokenEpoch = 0
        /// Set while the replica starts over after the database went back in time: no renewals.
        var startingOver = false
        /// Set while a database check runs: other renewals' answers are not acted on.
        var checkingDatabase = false
        /// A write was refused (or a reserved token found ahead): the next renewal checks the node.
        var suspected = false
        /// Checks started (one at a time, numbered from 1).
        var checksStarted = 0
        var checksOnSuspicion = 0
        /// Leases whose refused writes wait for the failover check numbered with them to pass before what
        /// was acknowledged of them is forgotten.
        var forgetAfterCheck: [(Lease, Int)] = []
        var failedChecks = 0
        var databaseFailovers = 0
    }

    /// A renewal's database time between the local monotonic times it was sent and answered.
    struct ClockReading {
        var sent: Duration
        var received: Duration
        var database: Date
    }

    let store: any HandlerStore
    let context: ReplicaContext
    let state: Mutex<State>
    /// Wakes `runOrphanReleases` (at most one pending wake-up: it takes every orphan at once).
    let orphanSignals: AsyncStream<Void>
    let orphanSignal: AsyncStream<Void>.Continuation

    init(store: any HandlerStore, context: ReplicaContext) {
        self.store = store
        self.context = context
        state = Mutex(
            State(
                acknowledged: FailoverCheckMemory(
                    window: context.configuration.acknowledgementWindow,
                    limit: CoordinatorConfiguration.acknowledgementLimit, now: context.clock.now)))
        (orphanSignals, orphanSignal) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    // MARK: - Registration

    /// Registers this process anew (voiding any lease an earlier process under this id held),
    /// retrying until it succeeds. - Throws: `CancellationError` on shutdown.
    func register() async throws {
        var backoff = Backoff(.background)
        while true {
            let sent = clock.now
            do {
                let node = try await store.register(
                    replicaID, address: configuration.address, ttl: configuration.leaseTTL)
                state.withLock { $0.lastRenewal = sent }
                if let node { registered(on: node) }
                return
            } catch {
                logger.warning("registration failed, retrying", metadata: [LogKeys.error: "\(error)"])
                try await clock.sleep(for: backoff.next())
            }
        }
    }

    /// Removes the registration after hand-off, bounded by one TTL (the database may be gone).
    func deregister() async {
        do {
            try await withTimeLimit(configuration.leaseTTL, clock: clock) {
                try await self.store.deregister(self.replicaID)
            }
        } catch {
            logger.warning("deregister failed", metadata: [LogKeys.error: "\(error)"])
        }
    }

    // MARK: - May I write?

    /// Whether this replica can still prove its leases by its own monotonic clock: the last
    /// renewal was sent less than `selfFenceAfter` ago.
    var leasesProvable: Bool {
        guard configuration.selfFencing else { return true }
        return state.withLock { state in
            guard let last = state.lastRenewal else { return false }
            return clock.now - last < configuration.selfFenceAfter
        }
    }

    /// Whether this replica can prove its leases, waiting for its registration or next renewal
    /// until `limit` passes.
    func awaitProvableLeases(within limit: Duration) async -> Bool {
        let deadline = clock.now + limit
        while !leasesProvable {
            let left = deadline - clock.now
            guard left > .zero else { return false }
            let registrations = signals.count(.registration)
            let renewals = signals.count(.renewal)
            if leasesProvable { return true }
            // The limit passing is an answer here (the loop returns false), not an error.
            _ = try? await withTimeLimit(left, clock: clock) {
                await withTaskGroup(of: Void.self) { either in
                    either.addTask { await self.signals.wait(.registration, after: registrations) }
                    either.addTask { await self.signals.wait(.renewal, after: renewals) }
                    await either.next()
                    either.cancelAll()
                }
            }
        }
        return true
    }

    /// Whether a write for `lease` may be attempted now. The store still checks the token.
    func mayWrite(_ lease: Lease) -> Bool {
        leasesProvable && !state.withLock { $0.excluded.contains(lease) }
    }

    /// True once registered and renewed within one TTL (readiness).
    var isCurrent: Bool {
        state.withLock { state in
            guard let last = state.lastRenewal else { return false }
            return clock.now - last < configuration.leaseTTL
        }
    }

    /// Runs one write for `lease`, recorded as in flight so that a renewal can tell a stuck one.
    func writing<T>(_ lease: Lease, _ body: () async throws -> T) async rethrows -> T {
        state.withLock { $0.writing[lease] = clock.now }
        defer { state.withLock { _ = $0.writing.removeValue(forKey: lease) } }
        return try await body()
    }

    /// Writes (or renewals of leases) the store refused: the lease was gone.
    func recordRejectedWrites(_ count: Int = 1) {
        state.withLock { $0.rejectedWrites += count }
        metrics.fencedWrites.increment(by: count)
    }

    var isSuperseded: Bool { state.withLock { $0.superseded } }

    var fenceCounts: (selfFences: Int, rejectedWrites: Int) {
        state.withLock { ($0.selfFences, $0.rejectedWrites) }
    }
}
