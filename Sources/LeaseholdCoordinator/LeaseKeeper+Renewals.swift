import CoreMetrics
import Foundation
import LeaseholdEngine
import LeaseholdKit
import LeaseholdRuntime
import LeaseholdStore
import Logging
import Synchronization

/// The lease keeper's renewals: one every heartbeat, each its own child task, and what an answer
/// tells (leases lost, a database that moved, a clock that stepped, orphans to release).
extension LeaseKeeper {
    /// Renews every `heartbeatInterval`. Each renewal runs as its own child task, so that one
    /// whose request never returns (a connection that died under it; postgres-nio does not always
    /// fail such a request) does not stop the next: the replica would otherwise fence itself for
    /// good while its database works. At most `maxRenewalsInFlight` recent ones run at once; one
    /// older than two TTLs no longer counts (it proves nothing any more, and a partition left three
    /// such renewals hanging for good, which stopped every later one), up to
    /// `maxRenewalsOutstanding` in all, which bounds what requests that never return can hold.
    func runRenewals(host: HandlerHost) async {
        await withDiscardingTaskGroup { group in
            while !Task.isCancelled, !isSuperseded {
                do { try await clock.sleep(for: configuration.heartbeatInterval) } catch { return }
                let now = clock.now
                let admitted = state.withLock { state -> Int? in
                    let recent = state.renewalsInFlight.values.filter { now - $0 < configuration.leaseTTL * 2 }
                    guard recent.count < Self.maxRenewalsInFlight,
                        state.renewalsInFlight.count < Self.maxRenewalsOutstanding
                    else { return nil }
                    let id = state.nextRenewalID
                    state.nextRenewalID += 1
                    state.renewalsInFlight[id] = now
                    return id
                }
                guard let id = admitted else {
                    logger.warning(
                        "renewals stuck in flight, waiting",
                        metadata: [LogKeys.count: "\(state.withLock { $0.renewalsInFlight.count })"])
                    continue
                }
                group.addTask {
                    await self.renewOnce(host: host)
                    _ = self.state.withLock { $0.renewalsInFlight.removeValue(forKey: id) }
                }
            }
        }
    }

    static let maxRenewalsInFlight = 3
    static let maxRenewalsOutstanding = 32

    /// One renewal: renews the registration (and so every lease on it) except leases whose write
    /// is stuck, then stops every handler whose lease the answer no longer shows and gives back
    /// leases this replica holds but runs nothing for.
    /// Long for now: the decisions of one renewal interleaved with their awaits; [simulate]
    /// (#31) turns them into a pure state machine with a small executor.
    func renewOnce(host: HandlerHost) async {
        defer { signals.passed(.renewal) }
        guard !state.withLock({ $0.startingOver }) else { return }
        // A database failover not yet checked: check before renewing anything (while the check
        // cannot be made, this replica renews nothing, so its leases lapse and others take over).
        if await recheckPendingDatabase(host: host) { return }
        let sent = clock.now
        // A write that has not returned within half a TTL is stuck (a dead connection that never
        // errors): stop renewing that lease so another replica takes the handler over, and stop
        // the handler here first, so that two replicas never run it at once. The token rejects the
        // stuck write should it ever land.
        let stuckLeases = state.withLock { state in
            state.writing.filter { sent - $0.value > configuration.leaseTTL / 2 }.map(\.key)
        }
        // Only a lease this replica still runs the handler under: a stuck write of a runtime that
        // was already fenced concerns a lease that is gone, not the handler's current one.
        let handlers = stuckLeases.compactMap { lease in
            host.handler(lease.handlerID).flatMap { $0.lease == lease ? $0 : nil }
        }
        let stuck = handlers.map(\.id)
        if !handlers.isEmpty {
            logger.warning("checkpoint stuck, letting lease expire", metadata: [LogKeys.count: "\(handlers.count)"])
            // A self-fence like the one on an old renewal: this replica stops the handlers itself
            // because it cannot prove their writes. Counted as one (whichever of the two comes
            // first after a partition depends on where the heartbeat falls).
            state.withLock { state in
                for handler in handlers { state.excluded.insert(handler.lease) }
            }
            if configuration.selfFencing { selfFence(handlers, host: host, reason: "write stuck") }
        }
        let renewal: Renewal
        do {
            renewal = try await store.renew(
                replicaID, address: configuration.address, ttl: configuration.leaseTTL, excluding: stuck)
        } catch StoreError.registrationSuperseded {
            // A second process took this replica id (its registration voided every lease of this
            // one). Stop everything here at once and take no more work; the coordinator then ends
            // with `CoordinatorError.replicaIDTaken` rather than fight over the id.
            state.withLock { $0.superseded = true }
            logger.error(
                "replica id registered by another process, stopping",
                metadata: [
                    LogKeys.count: "\(host.liveHandlers.count)"
                ])
            host.fence(host.liveHandlers, reason: "replica id taken")
            host.beginHandoff()
            return
        } catch {
            metrics.renewFailures.increment()
            logger.warning("lease renewal failed", metadata: [LogKeys.error: "\(error)"])
            return
        }
        metrics.renewLatency.recordInterval(since: sent, clock: clock)
        if let time = renewal.databaseTime,
            await clockStepped(ClockReading(sent: sent, received: clock.now, database: time), host: host)
        {
            return
        }
        if let node = renewal.database, await databaseMoved(node, host: host) { return }
        let held = renewal.held
        metrics.leasesHeld.record(held.count)
        let live = host.liveHandlers
        let orphans = state.withLock { state -> [HandlerID: FencingToken] in
            if let last = state.lastRenewal, sent - last > configuration.leaseTTL {
                logger.warning("lease renewed late", metadata: [LogKeys.elapsed: "\(sent - last)"])
            }
            // Renewals may complete out of order: the newest send instant proves the most.
            state.lastRenewal = max(state.lastRenewal ?? sent, sent)
            state.excluded = state.excluded.filter { held[$0.handlerID] == $0.token }
            // A lease held with no runtime here is an orphan only when two renewals in a row saw it
            // so: one acquired just before this renewal may not have started its runtime yet.
            let unrun = held.filter { !host.isHosting($0.key) }
            let orphans = unrun.filter { state.unrunLeases.contains($0.key) }
            state.unrunLeases = Set(unrun.keys)
            return orphans
        }
        // Only handlers taken before the renewal was sent can be missing from its answer because
        // their lease is gone; one claimed or created meanwhile may simply be newer, and one that
        // finished or is being stopped (hibernated, handed off) gave it up; one not yet written
        // (a `run`'s first pass), or written after the renewal was sent, has no lease it must show.
        let lost = live.filter { handler in
            guard let since = handler.heldSince, since < sent else { return false }
            return held[handler.id] != handler.lease.token && handler.isActive
        }
        if !lost.isEmpty {
            // The renewal is a write the database refused for these leases: counted with the
            // checkpoints it refused, so "fenced by the database" has one figure.
            recordRejectedWrites(lost.count)
            for handler in lost {
                logger.warning(
                    "lease lost",
                    metadata: [
                        LogKeys.handlerID: "\(handler.id)", LogKeys.fencingToken: "\(handler.lease.token)",
                    ])
            }
            host.fence(lost, reason: "lease lost")
            // Another replica (or a cancel, a purge) moved these on: their history is not ours to
            // check, once a failover check found that the database did not lose it instead.
            forgetAfterCheck(lost.map(\.lease))
        }
        pruneAcknowledged()
        if !orphans.isEmpty {
            state.withLock { $0.orphans.merge(orphans) { _, newer in newer } }
            orphanSignal.yield()
        }
    }
}
