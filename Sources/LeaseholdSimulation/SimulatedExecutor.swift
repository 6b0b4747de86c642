import Synchronization

/// One thread of execution for a whole simulated cluster: every job of every task that prefers it
/// (and of every default actor such a task enters) is queued here, and `runUntilIdle` runs them one
/// at a time in an order drawn from the seed. No other thread and no wall time decides what runs
/// next, so a seed replays the same interleaving.
///
/// Tasks reach it by `withTaskExecutorPreference(executor)`; child tasks inherit the preference.
final class SimulatedExecutor: TaskExecutor, @unchecked Sendable {
    // @unchecked: the queue is only touched under `queue`'s lock; jobs are run by the one driver
    // thread (`runUntilIdle`), which is the only caller of `UnownedJob.runSynchronously`.
    private let queue = Mutex<[UnownedJob]>([])
    private var random: SeededRandom
    /// Jobs run so far (part of the trace).
    private(set) var jobsRun = 0

    init(seed: UInt64) { random = SeededRandom(seed: seed ^ 0x5EED_E8EC) }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        queue.withLock { $0.append(job) }
    }

    /// Runs ready jobs, each picked at random among those ready, until none is ready.
    /// - Returns: how many ran.
    @discardableResult
    func runUntilIdle() -> Int {
        var ran = 0
        while let job = next() {
            job.runSynchronously(on: asUnownedTaskExecutor())
            ran += 1
        }
        jobsRun += ran
        return ran
    }

    private func next() -> UnownedJob? {
        let count = queue.withLock { $0.count }
        guard count > 0 else { return nil }
        let index = Int(random.next() % UInt64(count))
        return queue.withLock { $0.remove(at: index) }
    }

    var hasReadyJobs: Bool { queue.withLock { !$0.isEmpty } }
}

/// SplitMix64: small, fast, and the same on every platform (the standard library's generator is
/// not seedable).
struct SeededRandom: RandomNumberGenerator, Sendable {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// True with probability `p`.
    mutating func chance(_ p: Double) -> Bool { Double(next() >> 11) / Double(1 << 53) < p }

    /// A duration between `low` and `high`, in whole microseconds.
    mutating func duration(_ low: Duration, _ high: Duration) -> Duration {
        let lowUS = low.components.seconds * 1_000_000 + low.components.attoseconds / 1_000_000_000_000
        let highUS = high.components.seconds * 1_000_000 + high.components.attoseconds / 1_000_000_000_000
        guard highUS > lowUS else { return low }
        return .microseconds(lowUS + Int64(next() % UInt64(highUS - lowUS)))
    }
}
