import LeaseholdEngine
import LeaseholdRuntime
import LeaseholdStore
import Synchronization

/// Why a live handler is being stopped; decides what happens after its runtime returns.
enum StopReason: Sendable {
    /// Idle: write a snapshot, release the lease, leave memory (`IdleSweeper`).
    case hibernate
    /// Graceful shutdown: final checkpoint, release the lease so another replica takes it at once.
    case handoff
    /// The lease is gone or cannot be proven: stop at once and write nothing more.
    case leaseLost
}

/// One handler running on this replica under one lease.
final class LiveHandler: Sendable {
    let id: HandlerID
    let lease: Lease
    let runtime: HandlerRuntime
    let workflow: Workflow
    /// Monotonic time (`ReplicaClock.now`) at which this replica acquired the lease.
    let claimedAt: Duration
    let stopReason = Mutex<StopReason?>(nil)
    /// Set while the handler is not yet written to the store (see `PendingCreation`).
    let unwritten: UnwrittenRun?
    /// Finishes when the handler's task has ended (after hibernate / release).
    let ended: AsyncStream<Void>
    let endedContinuation: AsyncStream<Void>.Continuation

    init(
        id: HandlerID, lease: Lease, runtime: HandlerRuntime, workflow: Workflow, claimedAt: Duration,
        unwritten: UnwrittenRun? = nil
    ) {
        self.id = id
        self.unwritten = unwritten
        self.lease = lease
        self.runtime = runtime
        self.workflow = workflow
        self.claimedAt = claimedAt
        (ended, endedContinuation) = AsyncStream.makeStream(of: Void.self)
    }

    /// Asks the runtime to stop for `reason`; the first reason wins. Returns at once.
    func stop(_ reason: StopReason) {
        let first = stopReason.withLock { current -> Bool in
            guard current == nil else { return false }
            current = reason
            return true
        }
        if first { runtime.stop(reason == .leaseLost ? .abandon : .drain) }
    }

    /// Hands inbox events to the runtime (it skips ids it already has).
    func deliver(_ events: [InboxEvent]) {
        runtime.deliver(events.map { Delivery(inboxID: $0.id, event: $0.event) })
    }

    /// Written to the store: its lease is one a renewal can show.
    var isCreated: Bool { unwritten?.isWritten ?? true }

    /// Since when (monotonic) the store holds its lease: when it was claimed, or when the write
    /// that created it was answered (nil until then). A renewal sent earlier may not show it.
    var heldSince: Duration? {
        guard let unwritten else { return claimedAt }
        return unwritten.writtenAt
    }

    /// Running, not finished and not asked to stop: its lease should be renewed.
    var isActive: Bool {
        stopReason.withLock { $0 == nil } && !runtime.state.status.isFinished
    }
}
