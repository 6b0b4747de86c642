import LeaseholdEngine
import LeaseholdRuntime
import LeaseholdStore
import Logging
import CoreMetrics
import Metrics
import Synchronization

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
        var uncertain = false
        let store = coordinator.store
        while true {
            guard coordinator.leasesProvable() else {
                throw StoreError.leaseLost(lease.handlerID)
            }
            do {
                coordinator.state.withLock { $0.writing[lease.handlerID] = .now }
                defer { coordinator.state.withLock { _ = $0.writing.removeValue(forKey: lease.handlerID) } }
                try await store.checkpoint(checkpoint, lease: lease)
                coordinator.metrics.checkpoints.increment()
                coordinator.metrics.eventsAppended.increment(by: checkpoint.log.count)
                return
            } catch StoreError.sequenceConflict where uncertain {
                // An earlier attempt whose outcome was unknown did commit: the write is idempotent.
                if let record = try await store.handler(lease.handlerID), record.fencingToken == lease.token,
                    record.lastSequence == checkpoint.state.nextSequence - 1
                {
                    return
                }
                throw StoreError.sequenceConflict(lease.handlerID, checkpoint.state.nextSequence - 1)
            } catch let error where Self.isUnavailable(error) {
                uncertain = true
                coordinator.logger.warning("checkpoint retry", metadata: [
                    LogKeys.handlerID: "\(lease.handlerID)", LogKeys.error: "\(error)",
                ])
                try await Task.sleep(for: delay)
                delay = min(delay * 2, .milliseconds(500))
            }
        }
    }

    static func isUnavailable(_ error: any Error) -> Bool {
        if case StoreError.unavailable = error { return true }
        return false
    }
}
