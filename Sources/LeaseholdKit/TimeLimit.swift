/// An operation ran past its time limit.
public struct TimeLimitExceeded: Error, CustomStringConvertible, Sendable {
    /// The limit that passed.
    public var limit: Duration
    /// Says what passed.
    public var description: String { "timed out after \(limit.seconds) s" }

    /// - Parameter limit: the limit that passed.
    public init(limit: Duration) { self.limit = limit }
}

/// Runs `body` with a time limit on `clock`: the one timeout race every part uses.
///
/// When the limit passes first, `whenLimitPasses` runs, then `body` is cancelled and awaited
/// (structured: nothing of it outlives the call), then `timedOut()` is thrown; `body` must honour
/// cancellation, or `whenLimitPasses` must end it (a statement postgres-nio has sent ends only
/// when its connection closes), for the call to end at the limit. An error `body` throws itself
/// is never taken for the limit passing.
/// - Throws: `timedOut()` (`TimeLimitExceeded` when not given), or `body`'s error.
public func withTimeLimit<T: Sendable>(
    _ limit: Duration, clock: ReplicaClock = .system,
    timedOut: (@Sendable () -> any Error)? = nil,
    whenLimitPasses: (@Sendable () async -> Void)? = nil,
    _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await clock.sleep(for: limit)
            await whenLimitPasses?()
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else {
            throw timedOut?() ?? TimeLimitExceeded(limit: limit)
        }
        return value
    }
}
