import CoreMetrics
import Foundation
import LeaseholdEngine
import LeaseholdKit
import LeaseholdRuntime
import LeaseholdStore
import Logging
import Synchronization

/// The lease keeper's release of orphaned leases (held here with no runtime), in a loop of its own.
extension LeaseKeeper {
    /// Releases leases held with no runtime here, in their own loop: a release is a store call,
    /// and a store call that never returns (a connection that died mid-request) must not stop the
    /// renewals, or the whole replica would fence itself for good.
    func runOrphanReleases() async {
        for await _ in orphanSignals {
            if Task.isCancelled { return }
            let pending = orphans.withLock { orphans in
                defer { orphans = [:] }
                return orphans
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
}
