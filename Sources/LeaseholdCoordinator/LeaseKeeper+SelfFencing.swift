import CoreMetrics
import Foundation
import LeaseholdEngine
import LeaseholdKit
import LeaseholdRuntime
import LeaseholdStore
import Logging
import Synchronization

/// The lease keeper's self-fencing: every handler stops when no renewal proves the leases any more
/// (judged by the monotonic clock).
extension LeaseKeeper {
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
