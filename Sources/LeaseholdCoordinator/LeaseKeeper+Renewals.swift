import CoreMetrics
import Foundation
import LeaseholdEngine
import LeaseholdKit
import LeaseholdRuntime
import LeaseholdStore
import Logging
import Synchronization

/// The lease keeper's renewals: one every heartbeat, each its own child task, performing what the
/// lease machine reads in each answer (`LeaseMachine+Renewal.swift`).
extension LeaseKeeper {
    /// Renews every `heartbeatInterval`. Each renewal runs as its own child task, so that one
    /// whose request never returns (a connection that died under it; postgres-nio does not always
    /// fail such a request) does not stop the next: the replica would otherwise fence itself for
    /// good while its database works. How many may be in flight: `LeaseMachine.admitRenewal`.
    func runRenewals(host: HandlerHost) async {
        await withDiscardingTaskGroup { group in
            while !Task.isCancelled, !isSuperseded {
                do { try await clock.sleep(for: configuration.heartbeatInterval) } catch { return }
                guard let id = state.withLock({ $0.admitRenewal(at: clock.now) }) else {
                    logger.warning(
                        "renewals stuck in flight, waiting",
                        metadata: [LogKeys.count: "\(state.withLock { $0.renewalsInFlight.count })"])
                    continue
                }
                group.addTask {
                    await self.renewOnce(host: host)
                    self.state.withLock { $0.renewalEnded(id) }
                }
            }
        }
    }

    /// One renewal: renews the registration (and so every lease on it) except leases whose write
    /// is stuck, then performs what its answer tells: fence the handlers whose lease it no longer
    /// shows, give back leases held here with no runtime, check the database node, or start over
    /// after a clock step.
    func renewOnce(host: HandlerHost) async {
        defer { signals.passed(.renewal) }
        // A node change waiting for its check is checked first; one that passes lets this renewal
        // go on (a check begun is always performed: it holds every other renewal until it ends).
        var sent = clock.now
        var start = state.withLock { $0.startRenewal(at: sent, host: host.leaseView().view) }
        while case .check(let check) = start {
            guard await perform(check, host: host) == false else { return }
            sent = clock.now
            start = state.withLock { $0.startRenewal(at: sent, host: host.leaseView().view) }
        }
        guard case .send(let excluded, let fence) = start else { return }
        if !excluded.isEmpty {
            logger.warning("checkpoint stuck, letting lease expire", metadata: [LogKeys.count: "\(excluded.count)"])
        }
        if !fence.isEmpty {
            metrics.selfFences.increment()
            self.fence(fence, of: host.leaseView().handlers, host: host, reason: "write stuck")
        }
        let renewal: Renewal
        do {
            renewal = try await store.renew(
                replicaID, address: configuration.address, ttl: configuration.leaseTTL,
                excluding: excluded.map(\.handlerID))
        } catch StoreError.registrationSuperseded {
            // A second process took this replica id (its registration voided every lease of this
            // one). Stop everything here at once and take no more work; the coordinator then ends
            // with `CoordinatorError.replicaIDTaken` rather than fight over the id.
            let (view, handlers) = host.leaseView()
            let leases = state.withLock { $0.superseded(host: view) }
            logger.error(
                "replica id registered by another process, stopping", metadata: [LogKeys.count: "\(leases.count)"])
            self.fence(leases, of: handlers, host: host, reason: "replica id taken")
            host.beginHandoff()
            return
        } catch {
            metrics.renewFailures.increment()
            logger.warning("lease renewal failed", metadata: [LogKeys.error: "\(error)"])
            return
        }
        let received = clock.now
        metrics.renewLatency.recordInterval(since: sent, clock: clock)
        if let node = renewal.database {
            metrics.databaseTimeline.record(node.timeline)
            metrics.synchronousStandbys.record(node.synchronousStandbys ?? -1)
        }
        switch state.withLock({ $0.renewalAnswered(sent: sent, received: received, renewal: renewal) }) {
        case .clockStepped(let database, let replica):
            await restartAfterClockStep(database: database, replica: replica, host: host)
            return
        case .ignore:
            return
        case .check(let check):
            guard await perform(check, host: host) == false else { return }
        case .apply(let trust, let wentBack):
            if let trust { store.trust(trust) }
            if case .back(let database, let replica) = wentBack {
                logger.warning(
                    "database clock went back relative to the replica's",
                    metadata: [LogKeys.elapsed: "database \(database), replica \(replica)"])
            }
        }
        apply(renewal, sent: sent, host: host)
    }

    /// Acts on a renewal's answer: fences what it no longer shows, queues the orphans.
    private func apply(_ renewal: Renewal, sent: Duration, host: HandlerHost) {
        metrics.leasesHeld.record(renewal.held.count)
        let (view, handlers) = host.leaseView()
        let applied = state.withLock { $0.applyRenewal(sent: sent, held: renewal.held, host: view) }
        if let late = applied.lateBy {
            logger.warning("lease renewed late", metadata: [LogKeys.elapsed: "\(late)"])
        }
        if !applied.lost.isEmpty {
            // The renewal is a write the database refused for these leases: counted with the
            // checkpoints it refused, so "fenced by the database" has one figure.
            metrics.fencedWrites.increment(by: applied.lost.count)
            for lease in applied.lost {
                logger.warning(
                    "lease lost",
                    metadata: [LogKeys.handlerID: "\(lease.handlerID)", LogKeys.fencingToken: "\(lease.token)"])
            }
            fence(applied.lost, of: handlers, host: host, reason: "lease lost")
            // Another replica (or a cancel, a purge) moved these on: their history is not ours to
            // check, once a failover check found that the database did not lose it instead.
            forgetAfterCheck(applied.lost)
        }
        pruneAcknowledged()
        if !applied.orphans.isEmpty {
            orphans.withLock { $0.merge(applied.orphans) { _, newer in newer } }
            orphanSignal.yield()
        }
    }
}
