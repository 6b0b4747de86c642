import ArgumentParser
import Foundation
import LeaseholdSimulation

/// `leasehold-sim`: runs seeds of the deterministic simulation and reports violations.
///
/// Swift seeds its hashing per process unless `SWIFT_DETERMINISTIC_HASHING` is set, and a
/// dictionary's order would then differ between two runs of one seed: the tool re-runs itself
/// with it set.
@main
struct LeaseholdSim: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "leasehold-sim",
        abstract: "Runs the cluster simulation: one seed exactly (--seed), or many (--seeds / --budget).")

    @Option(help: "Run this seed only, and print its trace.") var seed: UInt64?
    @Option(help: "The first seed of a series.") var firstSeed: UInt64 = 1
    @Option(help: "How many seeds to run.") var seeds: Int = 10
    @Option(help: "Stop starting new seeds after this many seconds of wall time.") var budget: Double?
    @Option(help: "Run each seed this many times and require the same trace hash.") var repeats: Int = 1
    @Option(help: "Replicas.") var replicas: Int = 3
    @Option(help: "Handlers in the workload.") var handlers: Int = 30
    @Option(help: "Faults per seed.") var faults: Int = 5
    @Option(help: "Simulated seconds of workload and faults.") var window: Int = 180
    @Option(help: "Turn a safety mechanism off (\(SafetyMechanism.allCases.map(\.rawValue).joined(separator: ", "))).")
    var disable: String?
    @Flag(help: "Print one line per seed.") var verbose = false
    @Flag(help: "Stop at the first seed with a violation (for the mutation table).") var untilViolation = false

    mutating func run() throws {
        try Self.ensureDeterministicHashing()
        var mechanism: SafetyMechanism?
        if let disable {
            guard let known = SafetyMechanism(rawValue: disable) else {
                throw ValidationError("unknown mechanism '\(disable)'")
            }
            mechanism = known
        }
        let list = seed.map { [$0] } ?? (0..<UInt64(max(0, seeds))).map { firstSeed + $0 }
        let started = Date()
        var ran = 0
        var failing: UInt64?
        var cpu = 0.0
        var events = 0
        var simulated = Duration.zero
        for seed in list {
            if let budget, Date().timeIntervalSince(started) > budget { break }
            var options = SimulationOptions(seed: seed)
            options.replicas = replicas
            options.handlers = handlers
            options.faults = faults
            options.window = .seconds(window)
            options.disabled = mechanism
            let before = Self.cpuSeconds()
            let result = Simulation.run(options)
            cpu += Self.cpuSeconds() - before
            events += result.jobsRun
            simulated += result.simulatedTime
            for _ in 1..<max(1, repeats) {
                let again = Simulation.run(options)
                if again.traceHash != result.traceHash {
                    print(
                        "seed \(seed): trace hash differs between runs (\(hex(result.traceHash)) vs \(hex(again.traceHash)))"
                    )
                    throw ExitCode(2)
                }
            }
            ran += 1
            if verbose || self.seed != nil || !result.violations.isEmpty {
                print(
                    "seed \(seed): hash \(hex(result.traceHash)), \(result.jobsRun) jobs, \(result.writes) writes, "
                        + "\(result.answers) answers, \(result.handlersFinished) finished, simulated \(result.simulatedTime), "
                        + "\(result.violations.count) violations")
            }
            if self.seed != nil { print("faults:\n\(result.plan)") }
            for violation in result.violations.prefix(10) { print("  violation: \(violation)") }
            if !result.violations.isEmpty, failing == nil { failing = seed }
            if untilViolation, failing != nil { break }
        }
        let perMinute = cpu > 0 ? Double(ran) / cpu * 60 : 0
        print(
            "seeds run: \(ran), first failing seed: \(failing.map { "\($0)" } ?? "none"), "
                + String(
                    format: "%.0f seeds per CPU-minute, %.0f scheduled jobs per second", perMinute,
                    cpu > 0 ? Double(events) / cpu : 0))
        if failing != nil { throw ExitCode(1) }
    }

    private func hex(_ value: UInt64) -> String { String(value, radix: 16) }

    static func cpuSeconds() -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6 + Double(usage.ru_stime.tv_sec)
            + Double(usage.ru_stime.tv_usec) / 1e6
    }

    /// Re-runs this process with `SWIFT_DETERMINISTIC_HASHING=1` unless it is set.
    static func ensureDeterministicHashing() throws {
        guard ProcessInfo.processInfo.environment["SWIFT_DETERMINISTIC_HASHING"] == nil else { return }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: CommandLine.arguments[0]).standardizedFileURL
        if !FileManager.default.isExecutableFile(atPath: process.executableURL!.path) {
            process.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        }
        process.arguments = Array(CommandLine.arguments.dropFirst())
        var environment = ProcessInfo.processInfo.environment
        environment["SWIFT_DETERMINISTIC_HASHING"] = "1"
        process.environment = environment
        try process.run()
        process.waitUntilExit()
        throw ExitCode(process.terminationStatus)
    }
}
