import Synchronization

/// The seed's draws for what happens on the wire (latency, lost requests, lost answers), shared
/// by every link. Draws are taken in the order the serial executor runs the calls, so a seed
/// gives the same draws every time.
final class Chaos: Sendable {
    struct Odds: Sendable {
        /// One way, per call.
        var latency: (low: Duration, high: Duration) = (.microseconds(100), .milliseconds(3))
        /// A call lost before it reached the database.
        var lostRequest = 0.002
        /// A call applied whose answer was lost (the caller sees `unavailable`).
        var lostAnswer = 0.002
        /// A slow call (a loaded database): this much latency more.
        var slow = 0.01
        var slowBy: Duration = .milliseconds(400)
        /// A notification of the database that does not reach one process.
        var lostNotification = 0.01
    }

    private let random: Mutex<SeededRandom>
    private let odds = Mutex(Odds())
    /// Set once the faults healed: the wire loses nothing any more.
    private let calm = Mutex(false)

    init(seed: UInt64) { random = Mutex(SeededRandom(seed: seed ^ 0xC4A0_5C4A_0500)) }

    func healed() { calm.withLock { $0 = true } }

    func latency() -> Duration {
        let odds = odds.withLock { $0 }
        return random.withLock { random in
            var latency = random.duration(odds.latency.low, odds.latency.high)
            if random.chance(odds.slow) { latency += odds.slowBy }
            return latency
        }
    }

    /// How long a call to an external system takes (the `ledger` sample's posts): 50-400 ms.
    func remoteCall() -> Duration {
        random.withLock { $0.duration(.milliseconds(50), .milliseconds(400)) }
    }

    func loseRequest() -> Bool {
        guard !calm.withLock({ $0 }) else { return false }
        let p = odds.withLock { $0.lostRequest }
        return random.withLock { $0.chance(p) }
    }

    func loseNotification() -> Bool {
        guard !calm.withLock({ $0 }) else { return false }
        let p = odds.withLock { $0.lostNotification }
        return random.withLock { $0.chance(p) }
    }

    func loseAnswer() -> Bool {
        guard !calm.withLock({ $0 }) else { return false }
        let p = odds.withLock { $0.lostAnswer }
        return random.withLock { $0.chance(p) }
    }
}
