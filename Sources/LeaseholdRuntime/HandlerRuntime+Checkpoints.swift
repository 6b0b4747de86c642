import LeaseholdEngine
import LeaseholdKit
import Synchronization

/// What the checkpoint loop waits for while it coalesces.
enum CheckpointWait: Hashable, Sendable {
    /// A change a client can see, or the runtime's end: write at once.
    case urgent
}

/// The checkpoint side of a runtime: the main loop publishes each change, and the checkpoint
/// loop writes it (at once when a client can see it, else after coalescing), one write at a time.
extension HandlerRuntime {
    func publish(_ state: HandlerState, log: [LogRecord], consumed: [String], running: Int) {
        let changed = !log.isEmpty || !consumed.isEmpty
        guard changed || state.status.isFinished else {
            shared.withLock { shared in
                shared.state = state
                shared.lastActivity = clock.now
                shared.quiescent = state.isQuiescent && running == 0
            }
            return
        }
        // Seen by a client, or the last change for a while (no step runs that would write more).
        let urgent = state.status.isFinished || running == 0 || log.contains { !$0.isInternal }
        let nowUrgent = shared.withLock { shared -> Bool in
            shared.state = state
            shared.pendingLog.append(contentsOf: log)
            shared.pendingConsumed.append(contentsOf: consumed)
            shared.lastActivity = clock.now
            shared.quiescent = state.isQuiescent && running == 0
            shared.dirty = true
            guard urgent else { return false }
            shared.urgent = true
            return true
        }
        if nowUrgent { urgentChange.wake(.urgent) }
        checkpointContinuation.yield()
    }

    func checkpointLoop() async throws {
        for await _ in checkpointSignals {
            if checkpointCoalescing > .zero { await coalesce() }
            try await flush()
        }
        // The main loop ended: write what is left, unless the lease is gone.
        try await flush()
    }

    /// Returns when the pending change may not wait (at once if so already), or after
    /// `checkpointCoalescing`, or when cancelled.
    private func coalesce() async {
        guard shared.withLock({ !$0.urgent && $0.dirty }) else { return }  // the common case: no wait
        // The limit passing is an answer here (write what is pending), not an error.
        _ = try? await withTimeLimit(checkpointCoalescing, clock: clock) {
            await self.urgentChange.wait(for: .urgent) { self.shared.withLock { $0.urgent || !$0.dirty } }
        }
    }

    private func flush() async throws {
        let pending = shared.withLock { shared -> Checkpoint? in
            guard shared.dirty, !shared.abandoned else { return nil }
            let checkpoint = Checkpoint(
                state: shared.state, log: shared.pendingLog, consumedInbox: shared.pendingConsumed)
            shared.pendingLog = []
            shared.pendingConsumed = []
            shared.dirty = false
            shared.urgent = false
            shared.writing = true
            return checkpoint
        }
        guard let pending else { return }
        defer { shared.withLock { $0.writing = false } }
        try await persistence.checkpoint(pending)
    }
}
