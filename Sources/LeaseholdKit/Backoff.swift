/// The one retry schedule every loop uses: the first wait is 50 ms, each later wait doubles, up
/// to the pace's cap. (The Python kit has no retry loop, so no mirror.)
///
/// The constants, and why:
/// - first wait 50 ms: a blip (a session dropped and re-opened, one lost answer) costs one short
///   wait; an outage is reached in a few doublings.
/// - `.waitedOn`, cap 500 ms: work a client or a step is waiting on (an inbox read before a
///   handler's first step, a checkpoint, settling a run's creation, a child's start). After an
///   outage it resumes within half a second, at the cost of one statement per waiter every 500 ms.
/// - `.background`, cap 2 s: work nobody waits on right now (registration, the LISTEN session,
///   moving the token sequence, restarting the crash watcher): two seconds is well inside a lease
///   TTL, and a database that is down is asked once per replica every 2 s.
public struct Backoff: Sendable {
    /// What the retries are for, which sets the cap.
    public enum Pace: Sendable {
        /// A client or a step waits on it: capped at 500 ms.
        case waitedOn
        /// Nobody waits on it right now: capped at 2 s.
        case background
    }

    /// The first wait.
    public static let first = Duration.milliseconds(50)

    /// The longest wait of `pace`.
    public static func cap(_ pace: Pace) -> Duration {
        switch pace {
        case .waitedOn: .milliseconds(500)
        case .background: .seconds(2)
        }
    }

    private let cap: Duration
    private var upcoming = Backoff.first

    /// A schedule at its first wait.
    public init(_ pace: Pace) { cap = Self.cap(pace) }

    /// The wait to take now; the next one is twice as long, up to the cap.
    public mutating func next() -> Duration {
        defer { upcoming = min(upcoming * 2, cap) }
        return upcoming
    }

    /// Takes the next wait on `clock`, unless it would end at or past `deadline` (an instant of
    /// that clock): a retry loop bounded in time.
    /// - Returns: false, without waiting, when it would. - Throws: `CancellationError`.
    public mutating func wait(on clock: ReplicaClock, before deadline: Duration) async throws -> Bool {
        let delay = next()
        guard clock.now + delay < deadline else { return false }
        try await clock.sleep(for: delay)
        return true
    }

    /// Back to the first wait (after a success that lasted).
    public mutating func reset() { upcoming = Self.first }
}
