import CoreMetrics
import LeaseholdEngine
import LeaseholdKit
import LeaseholdRuntime
import LeaseholdStore
import Logging

/// Checkpoints a handler through the store under its lease.
///
/// Before each attempt it asks the `LeaseKeeper` whether a write for this lease may still be
/// tried (self-fencing, stuck-write exclusion); a store that is briefly unavailable is retried
/// while that holds, so a runtime whose lease was abandoned stops retrying. A write the store
/// rejects (`leaseLost`) is final: the runtime stops.
struct LeasePersistence: HandlerPersistence, ReplicaPart {
    let store: any HandlerStore
    let keeper: LeaseKeeper
    let context: ReplicaContext
    let lease: Lease
    /// Told the handler's record when a checkpoint finished it (see `HandlerHost.finished`).
    let finished: @Sendable (HandlerRecord) -> Void
    /// Set when the handler is not yet written: the first checkpoint creates it.
    var unwritten: UnwrittenRun? = nil
    /// Creates the children its steps ask for.
    var children: ChildStarts? = nil

    func startChild(_ request: ChildRequest) async throws {
        guard let children else { throw StepError.engine("nested workflows need a coordinator") }
        try await children(request, parent: lease.handlerID)
    }

    func checkpoint(_ checkpoint: Checkpoint) async throws {
        var backoff = Backoff(.waitedOn)
        var uncertain = false
        while true {
            guard keeper.mayWrite(lease) else { throw StoreError.leaseLost(lease.handlerID) }
            let creating = unwritten.map { !$0.isWritten } ?? false
            do {
                let record = try await keeper.writing(lease) {
                    guard creating, let unwritten else { return try await store.checkpoint(checkpoint, lease: lease) }
                    return try await unwritten.create(first: checkpoint, lease: lease, in: store)
                }
                if creating { created(checkpoint) }
                keeper.acknowledged(lease, lastSequence: checkpoint.state.nextSequence - 1)
                if let record {
                    if let reason = checkpoint.state.quarantine { quarantined(reason) }
                    finished(record)
                }
                metrics.checkpoints.increment()
                metrics.eventsAppended.increment(by: checkpoint.log.count)
                return
            } catch StoreError.handlerExists where uncertain && creating {
                // The creation whose outcome was unknown did commit (with this checkpoint: one
                // transaction), unless the row is another handler's.
                if try await landedEarlier(checkpoint) {
                    created(checkpoint)
                    keeper.acknowledged(lease, lastSequence: checkpoint.state.nextSequence - 1)
                    metrics.checkpoints.increment()
                    metrics.eventsAppended.increment(by: checkpoint.log.count)
                    return
                }
                throw StoreError.handlerExists(lease.handlerID)
            } catch StoreError.tokenAhead(let token) where creating {
                // The database's token sequence is behind the reserve (it went back in time, or
                // is another database): none of the reserved tokens may be used. Nothing was written.
                keeper.discardReservedTokens()
                keeper.suspectDatabase()
                logger.warning(
                    "reserved token ahead of the database",
                    metadata: [LogKeys.handlerID: "\(lease.handlerID)", LogKeys.fencingToken: "\(token)"])
                throw StoreError.tokenAhead(token)
            } catch StoreError.sequenceConflict where uncertain {
                // An earlier attempt whose outcome was unknown did commit: the write is idempotent.
                if try await landedEarlier(checkpoint) {
                    keeper.acknowledged(lease, lastSequence: checkpoint.state.nextSequence - 1)
                    return
                }
                throw StoreError.sequenceConflict(lease.handlerID, checkpoint.state.nextSequence - 1)
            } catch StoreError.leaseLost where uncertain {
                // The same when the retry no longer matches the row: a final checkpoint that
                // committed left the handler without owner (found by the [pg-ha] test of a lost
                // answer: the finished handler was counted as a rejected write), and any that
                // committed moved the row past the last sequence the retry expects.
                if try await landedEarlier(checkpoint) {
                    keeper.acknowledged(lease, lastSequence: checkpoint.state.nextSequence - 1)
                    return
                }
                throw StoreError.leaseLost(lease.handlerID)
            } catch StoreError.unavailable(let reason) {
                uncertain = true
                logger.warning(
                    "checkpoint retry", metadata: [LogKeys.handlerID: "\(lease.handlerID)", LogKeys.error: "\(reason)"])
                try await clock.sleep(for: backoff.next())
            }
        }
    }

    /// Counted and logged once the quarantine is durable (a replica that lost the lease meanwhile
    /// wrote nothing, and the next owner quarantines it instead).
    private func quarantined(_ reason: String) {
        metrics.quarantines.increment()
        logger.error("quarantined", metadata: [LogKeys.handlerID: "\(lease.handlerID)", LogKeys.reason: "\(reason)"])
    }

    private func created(_ checkpoint: Checkpoint) {
        guard let unwritten else { return }
        keeper.written(unwritten, lease: lease, lastSequence: checkpoint.state.nextSequence - 1)
    }

    /// Whether an earlier attempt of `checkpoint` committed: the handler's row carries this lease's
    /// token and exactly the checkpoint's last sequence (and, when it finishes the handler, its
    /// finished status).
    private func landedEarlier(_ checkpoint: Checkpoint) async throws -> Bool {
        guard let record = try await store.handler(lease.handlerID) else { return false }
        return record.fencingToken == lease.token && record.lastSequence == checkpoint.state.nextSequence - 1
            && (!checkpoint.state.status.isFinished || record.status == checkpoint.state.status)
    }
}
