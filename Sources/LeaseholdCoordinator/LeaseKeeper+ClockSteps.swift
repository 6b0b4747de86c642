import CoreMetrics
import Foundation
import LeaseholdKit
import LeaseholdStore
import Logging
import Synchronization

/// What the lease keeper does when the database clock stepped ahead of this replica's
/// (`LeaseMachine.clockStep` decides it).
extension LeaseKeeper {
    /// Leases judged by the database now expire early while self-fencing still trusts them: every
    /// handler here is fenced (the machine already refuses new claims and writes) and the replica
    /// registers anew, voiding its leases so that the handlers are claimed again under new tokens.
    func restartAfterClockStep(database: Duration, replica: Duration, host: HandlerHost) async {
        metrics.clockSteps.increment()
        logger.error(
            "database clock jumped ahead of the replica's, fencing every handler and registering anew",
            metadata: [
                LogKeys.elapsed: "database \(database), replica \(replica)",
                LogKeys.count: "\(host.liveHandlers.count)",
            ])
        host.fence(host.liveHandlers, reason: "clock step")
        do {
            try await register()
        } catch {
            // Cancelled (shutdown): nothing more to hold.
        }
        // Anything launched between the fence and the registration ran under a voided lease.
        host.fence(host.liveHandlers.filter { $0.claimedAt < clock.now }, reason: "clock step")
    }

    var clockSteps: Int { state.withLock { $0.clockSteps } }
}
