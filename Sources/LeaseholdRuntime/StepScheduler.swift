import LeaseholdEngine

/// Which step runs of one handler may start: at most `limit` at once in all, and no step past its
/// own `maxConcurrency`. A run that may not start waits; waiting runs start in the order they were
/// asked for, except that one whose step is at its own limit does not hold up a later run of
/// another step. A value: the runtime asks it, and launches what it answers.
struct StepScheduler {
    private let limit: Int
    private let stepLimit: (String) -> Int?
    private var running = 0
    private var runningPerStep: [String: Int] = [:]
    private var stepOfRun: [Int: String] = [:]
    private var waiting: [StepRun] = []

    /// - Parameters:
    ///   - limit: how many runs may execute at once.
    ///   - stepLimit: a step's own `maxConcurrency` (nil: only `limit`).
    init(limit: Int, stepLimit: @escaping (String) -> Int?) {
        self.limit = limit
        self.stepLimit = stepLimit
    }

    /// Runs started and not ended, plus runs waiting to start.
    var count: Int { running + waiting.count }

    /// Asks to start `run`: returns the runs to launch now (`run` itself when it may start, or
    /// waiting runs it did not overtake), each counted as running.
    mutating func submit(_ run: StepRun) -> [StepRun] {
        if waiting.isEmpty && mayStart(run) {
            begin(run)
            return [run]
        }
        waiting.append(run)
        return startWaiting()
    }

    /// A run ended (finished or failed); unknown ids are ignored.
    mutating func ended(_ runID: Int) {
        guard let step = stepOfRun.removeValue(forKey: runID) else { return }
        running -= 1
        runningPerStep[step, default: 1] -= 1
    }

    /// Starts the waiting runs that may start now, in order; returns them.
    mutating func startWaiting() -> [StepRun] {
        var started: [StepRun] = []
        var index = 0
        while index < waiting.count {
            if mayStart(waiting[index]) {
                let run = waiting.remove(at: index)
                begin(run)
                started.append(run)
            } else {
                index += 1
            }
        }
        return started
    }

    private func mayStart(_ run: StepRun) -> Bool {
        guard running < limit else { return false }
        guard let perStep = stepLimit(run.step) else { return true }
        return runningPerStep[run.step, default: 0] < perStep
    }

    private mutating func begin(_ run: StepRun) {
        running += 1
        runningPerStep[run.step, default: 0] += 1
        stepOfRun[run.id] = run.step
    }
}
