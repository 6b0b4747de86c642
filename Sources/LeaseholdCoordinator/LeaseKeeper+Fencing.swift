import CoreMetrics
import Foundation
import LeaseholdKit
import LeaseholdRuntime
import LeaseholdStore
import Logging
import Synchronization

/// The lease keeper's guards against losing leases unnoticed: orphaned leases released in their
/// own loop, clock steps detected at each renewal, and self-fencing when no renewal proves the
/// leases any more.
extension LeaseKeeper {
    // MARK: - Orphaned leases

    /// Releases leases held with no runtime here, in their own loop: a release is a store call,
    /// and a store call that never returns (a connection that died mid-request) must not stop the
    /// renewals, or the whole replica would fence itself for good.
    func runOrphanReleases() async {
        for await _ in orphanSignals {
            if Task.isCancelled { return }
            let pending = state.withLock { state in
                defer { state.orphans = [:] }
                return state.orphans
            }
            for (id, token) in pending {
                let lease = Lease(handlerID: id, replicaID: replicaID, token: token)
                do {
                    try await withTimeLimit(configuration.leaseTTL / 3, clock: clock) {
                        try await self.store.release(nil, lease: lease)
                    }
                    logger.info("lease released", metadata: [LogKeys.handlerID: "\(id)", LogKeys.reason: "orphaned"])
                } catch {
                    // The next renewal sees it again and asks again; meanwhile nobody else can run it.
                    logger.warning(
                        "orphan release failed", metadata: [LogKeys.handlerID: "\(id)", LogKeys.error: "\(error)"])
                }
            }
        }
    }

    // MARK: - Clock steps

    /// Compares the database's elapsed time between two renewals with this replica's. Each
    /// database reading lies between its renewal's send and answer, so without a step the two
    /// differ by at most the renewals' round trips. A forward step of the database clock beyond
    /// that plus `clockStepMargin` makes leases expire early by the database while self-fencing
    /// still trusts them: every handler here is fenced and the replica registers anew (voiding
    /// its leases, so that the handlers are claimed again under new tokens). A backward step is
    /// only logged.
    /// - Returns: true when it detected a step.
    func clockStepped(_ reading: ClockReading, host: HandlerHost) async -> Bool {
        let previous = state.withLock { state in
            defer { state.lastReading = reading }
            return state.lastReading
        }
        // A comparison across a long gap without renewals would add up ordinary drift.
        guard let previous, reading.sent - previous.sent <= configuration.leaseTTL * 2 else { return false }
        let database = Duration.milliseconds(
            Int64((reading.database.timeIntervalSince(previous.database) * 1000).rounded()))
        let local = reading.sent - previous.sent
        let divergence = database - local
        let tolerance = configuration.clockStepMargin
        if divergence < .zero - (previous.received - previous.sent) - tolerance {
            // The database clock went back (or ours ran fast): leases judged by it only last
            // longer in real time, and self-fencing uses our clock, so exclusivity holds.
            logger.warning(
                "database clock went back relative to the replica's",
                metadata: [LogKeys.elapsed: "database \(database), replica \(local)"])
            return false
        }
        guard divergence > (reading.received - reading.sent) + tolerance else { return false }
        // Forward: leases judged by the database expire early. Refuse new claims first (a claim
        // launched now would be voided by the registration below), then stop everything here.
        state.withLock { state in
            state.clockSteps += 1
            state.lastReading = nil
            state.lastRenewal = nil
        }
        metrics.clockSteps.increment()
        logger.error(
            "database clock jumped ahead of the replica's, fencing every handler and registering anew",
            metadata: [
                LogKeys.elapsed: "database \(database), replica \(local)", LogKeys.count: "\(host.liveHandlers.count)",
            ])
        host.fence(host.liveHandlers, reason: "clock step")
        do {
            try await register()
        } catch {
            // Cancelled (shutdown): nothing more to hold.
        }
        // Anything launched between the fence and the registration ran under a voided lease.
        host.fence(host.liveHandlers.filter { $0.claimedAt < clock.now }, reason: "clock step")
        return true
    }

    var clockSteps: Int { state.withLock { $0.clockSteps } }

    // MARK: - Self-fencing

    /// How often the replica checks that it can still prove its leases.
    static let selfFencePeriod = Duration.milliseconds(50)

    func runSelfFencing(host: HandlerHost) async {
        while !Task.isCancelled {
            do { try await clock.sleep(for: Self.selfFencePeriod) } catch { return }
            selfFenceIfNeeded(host: host)
        }
    }

    /// Stops every running handler when the last renewal is too old to prove their leases: by the
    /// time anyone else may claim them (one TTL after that renewal was sent), nothing runs here.
    /// - Returns: true when it fenced something.
    @discardableResult
    func selfFenceIfNeeded(host: HandlerHost) -> Bool {
        guard !leasesProvable else { return false }
        let handlers = host.liveHandlers.filter { $0.stopReason.withLock { $0 } == nil }
        guard !handlers.isEmpty else { return false }
        logger.warning("self-fenced", metadata: [LogKeys.count: "\(handlers.count)"])
        selfFence(handlers, host: host, reason: "self-fenced")
        return true
    }

    /// Stops handlers whose leases this replica cannot prove, counted as one self-fence.
    func selfFence(_ handlers: [LiveHandler], host: HandlerHost, reason: String) {
        state.withLock { $0.selfFences += 1 }
        metrics.selfFences.increment()
        host.fence(handlers, reason: reason)
    }
}
