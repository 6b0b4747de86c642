import LeaseholdEngine
import LeaseholdRuntime
import LeaseholdStore
import Logging
import CoreMetrics
import Metrics

/// Checkpoints a handler through the store under its lease.
///
/// Before each write it checks that the replica can still prove its leases (self-fencing); a
/// store that is briefly unavailable is retried while that holds. A write the store rejects
/// (`leaseLost`) is final: the runtime stops.
struct LeasePersistence: HandlerPersistence {
    let coordinator: Coordinator
    let lease: Lease

    func checkpoint(_ checkpoint: Checkpoint) async throws {
        var delay = Duration.milliseconds(20)
        while true {
            guard coordinator.leasesProvable() else {
                throw StoreError.leaseLost(lease.handlerID)
            }
            do {
                try await coordinator.store.checkpoint(checkpoint, lease: lease)
                coordinator.metrics.checkpoints.increment()
                coordinator.metrics.eventsAppended.increment(by: checkpoint.log.count)
                return
            } catch StoreError.unavailable(let reason) {
                coordinator.logger.debug("checkpoint retry", metadata: [
                    LogKeys.handlerID: "\(lease.handlerID)", LogKeys.error: "\(reason)",
                ])
                try await Task.sleep(for: delay)
                delay = min(delay * 2, .milliseconds(500))
            }
        }
    }
}
