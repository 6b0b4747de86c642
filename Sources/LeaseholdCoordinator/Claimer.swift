import CoreMetrics
import LeaseholdKit
import LeaseholdRuntime
import LeaseholdStore
import Logging

/// Claims what no live replica runs: handlers whose owner's lease lapsed (failover), released
/// ones, hibernated ones with inbox work or a due timer. Each claim raises the handler's token.
struct Claimer: ReplicaPart, Sendable {
    let store: any HandlerStore
    let context: ReplicaContext

    func run(host: HandlerHost) async {
        var failing = false
        while !Task.isCancelled {
            do { try await clock.sleep(for: configuration.claimInterval) } catch { return }
            failing = await claimOnce(host: host, failing: failing)
        }
    }

    /// - Parameter failing: the pass before failed (its failure was logged as a warning; the
    ///   repeats of a database outage, four a second, at debug).
    /// - Returns: whether this pass failed.
    @discardableResult
    func claimOnce(host: HandlerHost, failing: Bool = false) async -> Bool {
        defer { signals.passed(.claim) }
        guard !host.isShuttingDown, host.keeper.leasesProvable else { return failing }
        do {
            // Bounded, so a claim stuck on a dead connection cannot hold up shutdown or step-down;
            // a claim that committed after all leaves leases without runtimes, which the renewal
            // releases as orphans.
            let claimed = try await withTimeLimit(configuration.leaseTTL, clock: clock) {
                try await self.store.claim(
                    self.configuration.replicaID, limit: self.configuration.claimBatch, only: nil)
            }
            for handler in claimed {
                switch handler.acquired {
                case .failedOver, .claimed: metrics.failovers.increment()
                case .reloaded: metrics.reloads.increment()
                default: break
                }
                await host.launch(handler, reason: handler.acquired.rawValue)
            }
            if failing { logger.info("claims work again") }
            return false
        } catch {
            // The next pass (one claim interval later) tries again; nothing was claimed.
            logger.log(
                level: failing ? .debug : .warning, "claim failed", metadata: [LogKeys.error: "\(error)"])
            return true
        }
    }
}
