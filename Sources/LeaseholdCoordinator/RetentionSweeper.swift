import CoreMetrics
import LeaseholdKit
import LeaseholdRuntime
import LeaseholdStore
import Logging

/// Retention: deletes finished handlers (with their log and inbox) once they finished more than
/// `retention` ago, so the database stays bounded under churn.
///
/// Every replica runs it; no leader is needed, because each purge is one small transaction that
/// takes the oldest finished rows `FOR UPDATE SKIP LOCKED`, so concurrent sweeps split the work
/// instead of contending. A pass deletes at most `batch × maxBatches` handlers, then yields until
/// the next period.
struct RetentionSweeper: ReplicaPart, Sendable {
    let retention: Duration
    let store: any HandlerStore
    let context: ReplicaContext

    static let batch = 500
    static let maxBatches = 20

    /// A tenth of the retention, between 250 ms and one minute.
    var period: Duration { min(max(retention / 10, .milliseconds(250)), .seconds(60)) }

    func run() async {
        while !Task.isCancelled {
            do { try await clock.sleep(for: period) } catch { return }
            await purgeOnce()
        }
    }

    /// - Returns: how many handlers this pass deleted.
    @discardableResult
    func purgeOnce() async -> Int {
        var total = 0
        for _ in 0..<Self.maxBatches {
            let deleted: [HandlerID]
            do {
                deleted = try await withTimeLimit(configuration.leaseTTL, clock: clock) {
                    try await store.purgeFinished(olderThan: retention, limit: Self.batch)
                }
            } catch {
                // The next pass tries again; nothing is lost by deleting later.
                logger.warning("retention purge failed", metadata: [LogKeys.error: "\(error)"])
                break
            }
            total += deleted.count
            if deleted.count < Self.batch { break }
        }
        if total > 0 {
            metrics.handlersPurged.increment(by: total)
            logger.debug("purged finished handlers", metadata: [LogKeys.count: "\(total)"])
        }
        return total
    }
}
