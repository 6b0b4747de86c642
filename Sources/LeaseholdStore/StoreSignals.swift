import LeaseholdKit
import Synchronization

/// In-process wake-ups: log readers wait for a handler's log to change; the coordinator hears
/// about inbox events. Stores call `logChanged`/`inboxChanged` after commit (Postgres: from its
/// LISTEN connection, so events written by other replicas wake readers here too).
///
/// A wake-up may be spurious or lost (a dropped notification); readers therefore re-query and
/// wait with a timeout, so a lost signal delays but never loses an event.
public final class StoreSignals: Sendable {
    /// Versions live in a fixed number of buckets (handler ids hash into them), so the memory
    /// this costs does not grow with the number of handlers a replica has ever seen. Two handlers
    /// in one bucket only cause a spurious wake-up, which readers tolerate.
    static let buckets = 4096

    /// The log readers waiting, by handler id.
    private let logReaders = WaiterRegistry<String>()

    private static func bucket(_ handlerID: String) -> Int {
        var hash: UInt32 = 2_166_136_261
        for byte in handlerID.utf8 {
            hash = (hash ^ UInt32(byte)) &* 16_777_619
        }
        return Int(hash % UInt32(buckets))
    }

    private let versions = Mutex([UInt64](repeating: 0, count: StoreSignals.buckets))
    private let inboxContinuation: AsyncStream<String>.Continuation
    private let resubscriptionContinuation: AsyncStream<Void>.Continuation
    /// Handler ids whose inbox got an event (or whose lease was taken away). One consumer: the coordinator.
    public let inboxWakeups: AsyncStream<String>

    /// One element per (re)subscription of the store's notifications, when some may have been
    /// missed: the coordinator then reconciles every live handler's inbox. One consumer.
    public let resubscriptions: AsyncStream<Void>

    private let databaseMoveContinuation: AsyncStream<Void>.Continuation
    /// One element (coalesced) whenever an operation met a database node the replica has not
    /// checked yet (see `HandlerStore.trust`): the replica checks it now rather than at its next
    /// renewal. One consumer.
    public let databaseMoves: AsyncStream<Void>

    /// The store's clock: log readers' waits are measured on it.
    public let clock: ReplicaClock

    /// A change told to other listeners (`forward(to:)`).
    package enum Change: Sendable {
        case log(String)
        case inbox(String)
    }
    /// Told of every change too: the simulator's replica processes, each with signals of its own
    /// (as each replica has its own LISTEN connection), which may miss some.
    private let listeners = Mutex<[@Sendable (Change) -> Void]>([])

    /// Tells `listener` of every log and inbox change from now on.
    package func forward(to listener: @escaping @Sendable (Change) -> Void) {
        listeners.withLock { $0.append(listener) }
    }

    private func tell(_ change: Change) {
        for listener in listeners.withLock({ $0 }) { listener(change) }
    }

    /// Signals with no waiters and empty streams.
    public init(clock: ReplicaClock = .system) {
        self.clock = clock
        (databaseMoves, databaseMoveContinuation) = AsyncStream.makeStream(
            of: Void.self, bufferingPolicy: .bufferingNewest(1))
        (inboxWakeups, inboxContinuation) = AsyncStream.makeStream(
            of: String.self, bufferingPolicy: .bufferingNewest(4096))
        (resubscriptions, resubscriptionContinuation) = AsyncStream.makeStream(
            of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    /// Notifications were (re)subscribed after a gap: wakes every log reader and asks the
    /// coordinator to reconcile every live handler's inbox.
    public func resubscribed() {
        allLogsChanged()
        resubscriptionContinuation.yield()
    }

    /// An operation met a database node not checked yet.
    public func databaseMoved() { databaseMoveContinuation.yield() }

    /// The current version of a handler's log; pass it to `waitForLogChange`.
    public func logVersion(_ handlerID: String) -> UInt64 {
        versions.withLock { $0[Self.bucket(handlerID)] }
    }

    /// A handler's log grew (or it was cancelled or purged): wakes its log readers.
    public func logChanged(_ handlerID: String) {
        versions.withLock { $0[Self.bucket(handlerID)] &+= 1 }
        logReaders.wake(handlerID)
        tell(.log(handlerID))
    }

    /// Wakes every log reader (after a reconnect, when notifications may have been missed).
    public func allLogsChanged() {
        versions.withLock { versions in
            for index in versions.indices { versions[index] &+= 1 }
        }
        logReaders.wakeAll()
    }

    /// A handler's inbox got an event (or its lease was taken away): tells the coordinator
    /// (`inboxWakeups`).
    public func inboxChanged(_ handlerID: String) {
        inboxContinuation.yield(handlerID)
        tell(.inbox(handlerID))
    }

    /// Returns when the log version differs from `version`, after `timeout`, or on cancellation.
    public func waitForLogChange(_ handlerID: String, since version: UInt64, timeout: Duration) async {
        // The limit passing is an answer here, not an error: the reader looks again.
        _ = try? await withTimeLimit(timeout, clock: clock) {
            await self.logReaders.wait(for: handlerID) { self.logVersion(handlerID) != version }
        }
    }

    /// How many log readers wait right now (a gauge for metrics and tests).
    public var waitingReaders: Int { logReaders.count }
}
