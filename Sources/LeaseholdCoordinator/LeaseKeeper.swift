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
///
/// Every decision is made by `LeaseMachine` (a value, no I/O, no clock of its own); this class
/// performs what it decides: the store calls, stopping handlers, logs and metrics.
final class LeaseKeeper: ReplicaPart, Sendable {
    let store: any HandlerStore
    let context: ReplicaContext
    let state: Mutex<LeaseMachine>
    /// Orphaned leases waiting for `runOrphanReleases`.
    let orphans = Mutex<[HandlerID: FencingToken]>([:])
    /// Wakes `runOrphanReleases` (at most one pending wake-up: it takes every orphan at once).
    let orphanSignals: AsyncStream<Void>
    let orphanSignal: AsyncStream<Void>.Continuation

    init(store: any HandlerStore, context: ReplicaContext) {
        self.store = store
        self.context = context
        state = Mutex(LeaseMachine(configuration: context.configuration, now: context.clock.now))
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
                if let trusted = state.withLock({ $0.registered(sent: sent, node: node) }) { store.trust(trusted) }
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
    var leasesProvable: Bool { state.withLock { $0.leasesProvable(at: clock.now) } }

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
    func mayWrite(_ lease: Lease) -> Bool { state.withLock { $0.mayWrite(lease, at: clock.now) } }

    /// True once registered and renewed within one TTL (readiness).
    var isCurrent: Bool { state.withLock { $0.isCurrent(at: clock.now) } }

    /// Runs one write for `lease`, recorded as in flight so that a renewal can tell a stuck one.
    func writing<T>(_ lease: Lease, _ body: () async throws -> T) async rethrows -> T {
        state.withLock { $0.writeStarted(lease, at: clock.now) }
        defer { state.withLock { $0.writeEnded(lease) } }
        return try await body()
    }

    /// Writes (or renewals of leases) the store refused: the lease was gone.
    func recordRejectedWrites(_ count: Int = 1) {
        state.withLock { $0.rejectedWrites += count }
        metrics.fencedWrites.increment(by: count)
    }

    /// Stops `leases`' handlers, of those in `handlers` (a `leaseView`), for `reason`.
    func fence(_ leases: [Lease], of handlers: [Lease: LiveHandler], host: HandlerHost, reason: String) {
        host.fence(leases.compactMap { handlers[$0] }, reason: reason)
    }

    var isSuperseded: Bool { state.withLock { $0.superseded } }

    var fenceCounts: (selfFences: Int, rejectedWrites: Int) {
        state.withLock { ($0.selfFences, $0.rejectedWrites) }
    }
}
