import Foundation

/// The replica's sense of time, injected wherever a runtime or the coordinator reads time: a
/// monotonic clock for durations, sleeps and lease arithmetic, and a wall clock for durable timer
/// deadlines (which outlive the process and are compared with other replicas' clocks).
///
/// Monotonic instants are `Duration`s since the clock was made, so any `Clock<Duration>` (the
/// system's `ContinuousClock`, or a manual clock in tests) can drive it.
public struct ReplicaClock: Sendable {
    private let elapsed: @Sendable () -> Duration
    private let sleeper: @Sendable (Duration) async throws -> Void
    private let wallClock: @Sendable () -> Date

    /// - Parameters:
    ///   - clock: monotonic time; `ContinuousClock()` in production.
    ///   - wall: wall-clock time; `Date()` in production.
    public init(_ clock: any Clock<Duration>, wall: @escaping @Sendable () -> Date = { Date() }) {
        (elapsed, sleeper) = Self.open(clock)
        wallClock = wall
    }

    private static func open<C: Clock<Duration>>(_ clock: C)
        -> (@Sendable () -> Duration, @Sendable (Duration) async throws -> Void)
    {
        let origin = clock.now
        return ({ origin.duration(to: clock.now) }, { try await clock.sleep(for: $0) })
    }

    /// The system clocks. Each use makes a new value whose `now` counts from its making: compare
    /// instants of one value only (a replica makes one and passes it to every part).
    public static var system: ReplicaClock { ReplicaClock(ContinuousClock()) }

    /// Monotonic now, as the time since this clock was made.
    public var now: Duration { elapsed() }

    /// Wall-clock now.
    public var wall: Date { wallClock() }

    /// Wall-clock now in seconds since 1970 (the engine's time unit).
    public var wallSeconds: Double { wallClock().timeIntervalSince1970 }

    /// Sleeps on the monotonic clock. - Throws: `CancellationError` when the task is cancelled.
    public func sleep(for duration: Duration) async throws {
        try await sleeper(duration)
    }
}
