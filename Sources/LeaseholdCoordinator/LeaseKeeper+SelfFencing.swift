import CoreMetrics
import Foundation
import LeaseholdKit
import LeaseholdStore
import Logging
import Synchronization

/// The lease keeper's self-fencing: every handler stops when no renewal proves the leases any more
/// (judged by the monotonic clock; `LeaseMachine.selfFenceDue` decides).
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
        guard !leasesProvable else { return false }  // the common case, without a view of the host
        let (view, handlers) = host.leaseView()
        let due = state.withLock { $0.selfFenceDue(at: clock.now, host: view) }
        guard !due.isEmpty else { return false }
        logger.warning("self-fenced", metadata: [LogKeys.count: "\(due.count)"])
        metrics.selfFences.increment()
        fence(due, of: handlers, host: host, reason: "self-fenced")
        return true
    }
}
