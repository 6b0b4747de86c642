import LeaseholdSimulation
import Testing

/// The simulator itself, on the production coordinators: seeds with faults end without a
/// violation, a seed replays to the same trace, and a mechanism turned off is caught.
@Suite("Simulation")
struct SimulationTests {
    @Test("seeds with faults run to the end with no violation, every handler finished")
    func seedsPass() async {
        for seed in UInt64(1)...5 {
            let result = await Simulation.runOnOwnThread(SimulationOptions(seed: seed))
            #expect(result.violations.isEmpty, "seed \(seed): \(result.violations.prefix(5))")
            // The 30 handlers and the stream of runs; none is left running (liveness, above).
            #expect(result.handlersFinished >= 30, "seed \(seed)")
            #expect(result.plan.faults.count == 5)
        }
    }

    @Test("a seed replays exactly: the same trace hash, the same number of jobs")
    func replay() async {
        let first = await Simulation.runOnOwnThread(SimulationOptions(seed: 7))
        let again = await Simulation.runOnOwnThread(SimulationOptions(seed: 7))
        #expect(first.traceHash == again.traceHash)
        #expect(first.jobsRun == again.jobsRun)
        let other = await Simulation.runOnOwnThread(SimulationOptions(seed: 8))
        #expect(other.traceHash != first.traceHash)
    }

    @Test("with self-fencing off, a replica cut off keeps running steps: caught within 100 seeds")
    func selfFencingOffIsCaught() async {
        var options = SimulationOptions(seed: 1)
        options.disabled = .selfFencing
        var caught: UInt64?
        for seed in UInt64(1)...100 {
            options.seed = seed
            if await !Simulation.runOnOwnThread(options).violations.isEmpty {
                caught = seed
                break
            }
        }
        #expect(caught != nil)
    }
}
