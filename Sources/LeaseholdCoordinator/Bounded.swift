import CoreMetrics
import LeaseholdRuntime
import Metrics

/// An operation ran past its time limit.
public struct OperationTimedOut: Error, CustomStringConvertible {
    /// Says that the operation timed out.
    public var description: String { "timed out" }
}

/// Runs an operation with a time limit (shutdown must not hang on an unreachable database).
/// The operation is cancelled when the limit passes; it must honour cancellation.
/// - Throws: `OperationTimedOut`, or the operation's error.
public func bounded<T: Sendable>(
    _ limit: Duration, clock: ReplicaClock = .system, _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await clock.sleep(for: limit)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else { throw OperationTimedOut() }
        return value
    }
}

extension Metrics.Timer {
    /// Records the time from `start` to now, both read from `clock`.
    func recordInterval(since start: Duration, clock: ReplicaClock) {
        let elapsed = clock.now - start
        recordNanoseconds(elapsed.components.seconds * 1_000_000_000 + elapsed.components.attoseconds / 1_000_000_000)
    }
}
