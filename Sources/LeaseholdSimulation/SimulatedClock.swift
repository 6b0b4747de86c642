import Synchronization

/// Simulated time: it moves only when the driver moves it (`advanceToNextDeadline`), to the
/// earliest sleeper's deadline, waking every sleeper due then. Sleepers are woken in deadline
/// order, ties in the order they went to sleep.
final class SimulatedClock: Clock, Sendable {
    typealias Duration = Swift.Duration

    struct Instant: InstantProtocol, Sendable {
        var offset: Swift.Duration
        func advanced(by duration: Swift.Duration) -> Instant { Instant(offset: offset + duration) }
        func duration(to other: Instant) -> Swift.Duration { other.offset - offset }
        static func < (a: Instant, b: Instant) -> Bool { a.offset < b.offset }
    }

    private struct Sleeper {
        var deadline: Swift.Duration
        var order: UInt64
        var continuation: CheckedContinuation<Void, any Error>
    }

    private struct State {
        var now = Swift.Duration.zero
        var sleepers: [UInt64: Sleeper] = [:]
        var nextOrder: UInt64 = 0
    }

    private let state = Mutex(State())

    init() {}

    var now: Instant { Instant(offset: state.withLock { $0.now }) }
    var minimumResolution: Swift.Duration { .microseconds(1) }

    func sleep(until deadline: Instant, tolerance: Swift.Duration? = nil) async throws {
        let order = state.withLock { state -> UInt64 in
            defer { state.nextOrder += 1 }
            return state.nextOrder
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                let resumeNow = state.withLock { state -> Bool in
                    if Task.isCancelled { return true }
                    if deadline.offset <= state.now { return true }
                    state.sleepers[order] = Sleeper(deadline: deadline.offset, order: order, continuation: continuation)
                    return false
                }
                if resumeNow {
                    if Task.isCancelled {
                        continuation.resume(throwing: CancellationError())
                    } else {
                        continuation.resume()
                    }
                }
            }
        } onCancel: {
            let sleeper = state.withLock { $0.sleepers.removeValue(forKey: order) }
            sleeper?.continuation.resume(throwing: CancellationError())
        }
    }

    /// The earliest deadline of a sleeper, if any sleeps.
    var nextDeadline: Swift.Duration? { state.withLock { $0.sleepers.values.map(\.deadline).min() } }

    /// Moves time to `time` (never back) and wakes every sleeper due by then.
    /// - Returns: how many it woke.
    @discardableResult
    func advance(to time: Swift.Duration) -> Int {
        let due = state.withLock { state -> [Sleeper] in
            state.now = max(state.now, time)
            let due = state.sleepers.values.filter { $0.deadline <= state.now }
                .sorted { ($0.deadline, $0.order) < ($1.deadline, $1.order) }
            for sleeper in due { state.sleepers[sleeper.order] = nil }
            return due
        }
        for sleeper in due { sleeper.continuation.resume() }
        return due.count
    }
}
