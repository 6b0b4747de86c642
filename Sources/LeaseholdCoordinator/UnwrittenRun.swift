import CoreMetrics
import Foundation
import LeaseholdEngine
import LeaseholdKit
import LeaseholdRuntime
import LeaseholdStore
import Logging
import Synchronization

/// A `run` whose handler is launched before it is written (a server-chosen id): its first
/// checkpoint creates it, in the same commit (`HandlerStore.create(_:owner:token:first:)`), so a
/// run that finishes in its first pass costs one write. Until then no other replica can see it,
/// and no renewal can show its lease.
///
/// Everything of this path is in this file: the launch (`Coordinator.runUnwritten`), the first
/// write (`create(first:lease:in:)`, sent by `LeasePersistence.checkpoint`, whose retry loop is
/// every write's), the hand-off of one stopped before that write (`HandlerHost.writeAndHandOff`),
/// the moment it becomes a handler like any other (`LeaseKeeper.written`), and a creation whose
/// outcome is unknown (`Coordinator.settle`). Its token comes from the keeper's reserve
/// (`LeaseKeeper+Tokens.swift`), which stays with the keeper: the failover check discards it
/// under the keeper's lock. Measured gain: `bench/results/ab-fold.md` (+12 % echo `run`
/// throughput, paired over 8 rounds; p99 unchanged).
final class UnwrittenRun: Sendable {
    private struct State {
        /// Monotonic time at which the write that created it was answered.
        var writtenAt: Duration?
        /// A write that may create it was sent (its outcome may be unknown).
        var attempted = false
    }

    let handler: NewHandler
    private let state = Mutex(State())

    init(_ handler: NewHandler) { self.handler = handler }

    var isWritten: Bool { state.withLock { $0.writtenAt != nil } }
    var writtenAt: Duration? { state.withLock { $0.writtenAt } }
    var wasAttempted: Bool { state.withLock { $0.attempted } }

    func markWritten(at time: Duration) {
        state.withLock { state in
            state.attempted = true
            if state.writtenAt == nil { state.writtenAt = time }
        }
    }

    /// Sends the write that creates the handler with `checkpoint` as its first (recorded as
    /// attempted first: from then on its outcome may be unknown).
    /// - Returns: the record when the checkpoint finished it.
    func create(first checkpoint: Checkpoint, lease: Lease, in store: any HandlerStore) async throws -> HandlerRecord? {
        state.withLock { $0.attempted = true }
        return try await store.create(handler, owner: lease.replicaID, token: lease.token, first: checkpoint)
    }
}

extension Coordinator {
    /// Launches `new` unwritten under `token` (from the keeper's reserve) and awaits its end.
    func runUnwritten(_ new: NewHandler, token: FencingToken) async throws -> HandlerRecord {
        let unwritten = UnwrittenRun(new)
        let claimed = ClaimedHandler(
            record: HandlerRecord(
                id: new.id, workflowName: new.workflowName, runID: new.runID, status: .running, error: nil,
                result: nil, startedAt: clock.wall, updatedAt: clock.wall, completedAt: nil, owner: replicaID,
                leaseExpiresAt: nil, fencingToken: token, hibernated: false, lastSequence: -1, wakeAt: nil),
            lease: Lease(handlerID: new.id, replicaID: replicaID, token: token),
            state: HandlerState(workflowName: new.workflowName), acquired: .created,
            pendingInbox: [new.startEvent])
        guard await host.launch(claimed, reason: "created", unwritten: unwritten) else {
            throw CoordinatorError.shuttingDown
        }
        return try await awaitCompletion(new.id, runID: new.runID, unwritten: unwritten)
    }

    static let preventedReason = "not started: its creation's outcome was unknown and it was prevented"

    /// Makes the unknown outcome of a creation certain (`HandlerStore.preventCreation`), retrying
    /// while the database does not answer, for up to three lease TTLs (a failover or a stall);
    /// past that the outcome stays unknown and the run says so.
    /// - Parameter serverChosenID: leave a failed record under the id (no client will reuse it).
    /// - Returns: the record when the creation committed; nil when it never will.
    func settle(_ new: NewHandler, serverChosenID: Bool) async throws -> HandlerRecord? {
        let id = new.id
        let deadline = clock.now + configuration.leaseTTL * 3
        var backoff = Backoff(.waitedOn)
        while true {
            do {
                let record = try await withTimeLimit(configuration.leaseTTL, clock: clock) { [store] in
                    try await store.preventCreation(
                        new,
                        reason: serverChosenID ? Self.preventedReason : nil)
                }
                logger.warning(
                    "a run's creation had an unknown outcome; settled",
                    metadata: [LogKeys.handlerID: "\(id)", "written": "\(record != nil)"])
                // Another run of a client's id (kept from before): this creation did not land.
                if let record, record.runID != new.runID { throw CoordinatorError.handlerRunning(id) }
                // This settle's own earlier attempt, committed after it timed out: prevented.
                if let record, record.status == .failed, record.lastSequence == -1,
                    record.error?.hasPrefix(Self.preventedReason) == true
                {
                    return nil
                }
                return record
            } catch StoreError.handlerNotFound {
                // The creation landed, ran, finished and was purged before this read: it ran.
                throw CoordinatorError.runOutcomeUnknown(id)
            } catch let error as CoordinatorError {
                throw error
            } catch let error where !(error is CancellationError) {
                guard try await backoff.wait(on: clock, before: deadline) else {
                    throw CoordinatorError.runOutcomeUnknown(id)
                }
            }
        }
    }
}

extension HandlerHost {
    /// A handler stopped (shutting down) before its first checkpoint: written now and released,
    /// so that another replica runs it and its `run` is still answered.
    func writeAndHandOff(_ handler: LiveHandler, _ unwritten: UnwrittenRun, final: HandlerState) async throws {
        guard keeper.mayWrite(handler.lease) else { throw StoreError.leaseLost(handler.id) }
        _ = try await withTimeLimit(configuration.leaseTTL, clock: clock) {
            try await unwritten.create(
                first: Checkpoint(state: final, log: [], consumedInbox: []), lease: handler.lease, in: self.store)
        }
        keeper.written(unwritten, lease: handler.lease, lastSequence: final.nextSequence - 1)
        try await withTimeLimit(configuration.leaseTTL, clock: clock) {
            try await self.store.release(nil, lease: handler.lease)
        }
    }
}

extension LeaseKeeper {
    /// A handler launched unwritten was written (by its first checkpoint, or at hand-off): from
    /// now on its lease is one like any other.
    func written(_ unwritten: UnwrittenRun, lease: Lease, lastSequence: Int64) {
        unwritten.markWritten(at: clock.now)
        granted(lease, lastSequence: lastSequence)
        metrics.handlersStarted.increment()
    }
}
