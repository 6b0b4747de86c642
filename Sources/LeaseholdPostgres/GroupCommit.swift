import Foundation
import LeaseholdKit
import LeaseholdStore
import Synchronization

/// How the store gathers writes into shared commits (see `GroupCommit`).
public struct GroupCommitSettings: Sendable, Equatable {
    /// The most writes in one flush (one statement per kind, one commit).
    public var maxBatch: Int
    /// How long a writer holds a flush open for more writes after the first one arrived. Zero:
    /// it flushes whatever is queued as soon as it is free, so batches form only while earlier
    /// flushes are in flight (no added latency when the store is not busy).
    public var linger: Duration
    /// Flushes in flight at once, each on its own pooled connection.
    public var writers: Int

    /// Settings, clamped: at least one write per flush and one writer, no negative linger.
    public init(maxBatch: Int = 128, linger: Duration = .zero, writers: Int = 2) {
        self.maxBatch = max(1, maxBatch)
        self.linger = max(.zero, linger)
        self.writers = max(1, writers)
    }

    /// What a replica uses unless told otherwise.
    public static let standard = GroupCommitSettings()
}

/// What group commit has done so far.
package struct GroupCommitStats: Sendable, Equatable {
    package var flushes = 0
    package var writes = 0
    package var largest = 0
    /// Flushes the server refused, whose writes were then written one by one.
    package var splits = 0

    package init(flushes: Int = 0, writes: Int = 0, largest: Int = 0, splits: Int = 0) {
        self.flushes = flushes
        self.writes = writes
        self.largest = largest
        self.splits = splits
    }
}

/// Group commit: the writes of many handlers (creations and checkpoints) share one transaction.
///
/// Callers queue a write and wait; `writers` loops in the store's service take up to `maxBatch`
/// queued writes at a time — never two of one handler in one flush, which keeps each handler's
/// writes in order and each row's fencing predicate about one lease — and write them with one
/// statement per kind and one COMMIT. Every row is still fenced by its own lease, and each caller
/// is told what happened to its own write: a stale lease fails only its own checkpoint. A caller
/// is answered only after COMMIT answered, so nothing is acknowledged before it is durable.
///
/// A flush the server refused (a constraint, a deadlock) rolled back as a whole; its writes are
/// then written one by one, so only the one at fault fails. A flush whose outcome is unknown (the
/// connection died) fails every write in it with `unavailable`, exactly as a lone write would.
final class GroupCommit: Sendable {
    enum Write: Sendable {
        /// The start event comes encoded: a value that cannot be encoded fails its own caller,
        /// never a flush. `token` 0: the next of the sequence, else a reserved one; with `first`,
        /// the handler's first checkpoint is written in the same flush, after the creation.
        case create(NewHandler, owner: ReplicaID, event: String, token: Int64, first: PostgresStore.CheckpointRow?)
        case checkpoint(PostgresStore.CheckpointRow)

        /// Writes with one key never share a flush.
        var key: String {
            switch self {
            case .create(let handler, _, _, _, _): handler.id.rawValue
            case .checkpoint(let row): row.id
            }
        }
    }

    enum Outcome: Sendable {
        case created(ClaimedHandler)
        /// With the handler's record when the checkpoint finished it.
        case written(HandlerRecord?)
    }

    struct Queued: Sendable {
        var number: UInt64
        var write: Write
    }

    /// No writer runs (the store's service is not running): the caller writes alone.
    struct NotRunning: Error {}

    private struct State {
        var next: UInt64 = 0
        var queue: [Queued] = []
        var waiting: [UInt64: CheckedContinuation<Outcome, any Error>] = [:]
        var idleWriters: [CheckedContinuation<Void, Never>] = []
        /// Keys of writes in a flush now: their next write waits for the next flush.
        var inFlight: Set<String> = []
        var writers = 0
        var stats = GroupCommitStats()

        var hasWorkToTake: Bool { queue.contains { !inFlight.contains($0.write.key) } }
    }

    let settings: GroupCommitSettings
    private let clock: ReplicaClock
    private let state = Mutex(State())

    init(settings: GroupCommitSettings, clock: ReplicaClock) {
        self.settings = settings
        self.clock = clock
    }

    var stats: GroupCommitStats { state.withLock { $0.stats } }

    /// Whether writers run (before the store's service starts, writes commit alone).
    var isRunning: Bool { state.withLock { $0.writers > 0 } }

    /// Writes waiting for a flush.
    var queued: Int { state.withLock { $0.queue.count } }

    // MARK: - Callers

    /// Queues `write` and waits for its flush.
    /// - Throws: `NotRunning` when no writer runs; `CancellationError` when the caller is
    ///   cancelled (a write already in a flush may still land: every write is fenced); the write's
    ///   own error otherwise.
    func submit(_ write: Write) async throws -> Outcome {
        let number = state.withLock { state -> UInt64 in
            state.next += 1
            return state.next
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                enum Admission {
                    case queued(CheckedContinuation<Void, Never>?)
                    case cancelled, notRunning
                }
                let admission = state.withLock { state -> Admission in
                    // Checked under the lock: a cancellation handler that ran before this found
                    // nothing to remove, and the flag it follows is set by now.
                    if Task.isCancelled { return .cancelled }
                    guard state.writers > 0 else { return .notRunning }
                    state.queue.append(Queued(number: number, write: write))
                    state.waiting[number] = continuation
                    return .queued(state.idleWriters.popLast())
                }
                switch admission {
                case .queued(let writer): writer?.resume()
                case .cancelled: continuation.resume(throwing: CancellationError())
                case .notRunning: continuation.resume(throwing: NotRunning())
                }
            }
        } onCancel: {
            let continuation = state.withLock { state in
                state.queue.removeAll { $0.number == number }
                return state.waiting.removeValue(forKey: number)
            }
            continuation?.resume(throwing: CancellationError())
        }
    }

    // MARK: - Writers

    /// Runs the writers until cancelled; then fails what is still queued with `unavailable`.
    /// - Parameter flush: writes one batch and answers every write in it.
    func run(_ flush: @escaping @Sendable ([Queued]) async -> [UInt64: Result<Outcome, any Error>]) async {
        state.withLock { $0.writers += settings.writers }
        await withDiscardingTaskGroup { group in
            for _ in 0..<settings.writers {
                group.addTask { await self.writerLoop(flush) }
            }
        }
        let abandoned = state.withLock { state in
            state.writers = 0
            state.queue = []
            defer { state.waiting = [:] }
            return Array(state.waiting.values)
        }
        for continuation in abandoned { continuation.resume(throwing: StoreError.unavailable("store stopped")) }
    }

    private func writerLoop(_ flush: @Sendable ([Queued]) async -> [UInt64: Result<Outcome, any Error>]) async {
        while !Task.isCancelled {
            await waitForWork()
            if settings.linger > .zero { await linger() }
            // Stopping: what is queued is failed by `run` (as `unavailable`), not flushed from a
            // cancelled task, whose connection request would fail with CancellationError.
            if Task.isCancelled { return }
            let batch = take()
            guard !batch.isEmpty else { continue }
            let results = await flush(batch)
            answer(batch, with: results)
        }
    }

    /// Returns when a write is queued that no other flush holds the key of (or when cancelled).
    private func waitForWork() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let ready = state.withLock { state -> Bool in
                    if state.hasWorkToTake || Task.isCancelled { return true }
                    state.idleWriters.append(continuation)
                    return false
                }
                if ready { continuation.resume() }
            }
        } onCancel: {
            let idle = state.withLock { state in
                defer { state.idleWriters = [] }
                return state.idleWriters
            }
            for writer in idle { writer.resume() }
        }
    }

    /// Holds the flush open until `maxBatch` writes are queued or `linger` has passed.
    private func linger() async {
        let deadline = clock.now + settings.linger
        while state.withLock({ $0.queue.count }) < settings.maxBatch {
            let left = deadline - clock.now
            guard left > .zero else { return }
            do { try await clock.sleep(for: min(left, .milliseconds(1))) } catch { return }
        }
    }

    /// The oldest queued writes, at most `maxBatch`, one per key and none of a key in flight in
    /// another flush (those stay queued, in order).
    /// What is left is offered to an idle writer, which may flush it while this one flushes.
    private func take() -> [Queued] {
        let (batch, writer) = state.withLock { state -> ([Queued], CheckedContinuation<Void, Never>?) in
            var batch: [Queued] = []
            var kept: [Queued] = []
            for queued in state.queue {
                if batch.count < settings.maxBatch, state.inFlight.insert(queued.write.key).inserted {
                    batch.append(queued)
                } else {
                    kept.append(queued)
                }
            }
            state.queue = kept
            return (batch, state.hasWorkToTake ? state.idleWriters.popLast() : nil)
        }
        writer?.resume()
        return batch
    }

    private func answer(_ batch: [Queued], with results: [UInt64: Result<Outcome, any Error>]) {
        let answers = state.withLock {
            state -> [(CheckedContinuation<Outcome, any Error>, Result<Outcome, any Error>)] in
            state.stats.flushes += 1
            state.stats.writes += batch.count
            state.stats.largest = max(state.stats.largest, batch.count)
            for queued in batch { state.inFlight.remove(queued.write.key) }
            return batch.compactMap { queued in
                guard let continuation = state.waiting.removeValue(forKey: queued.number) else { return nil }
                return (continuation, results[queued.number] ?? .failure(StoreError.unavailable("no answer")))
            }
        }
        for (continuation, result) in answers { continuation.resume(with: result) }
        wakeIdleWriterIfWorkLeft()
    }

    func recordSplit() { state.withLock { $0.stats.splits += 1 } }

    private func wakeIdleWriterIfWorkLeft() {
        let writer = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.hasWorkToTake ? state.idleWriters.popLast() : nil
        }
        writer?.resume()
    }
}
