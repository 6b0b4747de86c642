import CoreMetrics
import Foundation
import LeaseholdEngine
import LeaseholdKit
import LeaseholdRuntime
import LeaseholdStore
import Logging
import Synchronization

/// The lease keeper's check, at each renewal, that the database's clock did not step against this
/// replica's.
extension LeaseKeeper {
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
}
