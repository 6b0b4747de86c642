import Foundation
import LeaseholdEngine
import LeaseholdSamples
import Testing

/// SplitMix64: a seeded generator, so a failing case can be replayed from its seed.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

@Suite("Snapshot and restore (property)")
struct SnapshotPropertyTests {
    static func randomCase(_ rng: inout SeededGenerator) -> (String, JSONValue, [AnyEvent]) {
        switch Int.random(in: 0..<5, using: &rng) {
        case 0: return ("counter", ["count_to": .int(Int.random(in: 0...25, using: &rng))], [])
        case 1:
            let items = (0..<Int.random(in: 0...8, using: &rng)).map { _ in
                JSONValue.int(Int.random(in: -50...50, using: &rng))
            }
            return ("fanout", ["items": .array(items)], [])
        case 2:
            return (
                "approval", ["request": .string("r\(Int.random(in: 0...9, using: &rng))")],
                [AnyEvent(type: "HumanResponseEvent", value: ["response": "ok"])]
            )
        case 3: return ("flaky", ["fail_times": .int(Int.random(in: 0...6, using: &rng))], [])
        default: return ("timer", ["seconds": .double(Double(Int.random(in: 0...3600, using: &rng)))], [])
        }
    }

    @Test("restoring from a snapshot at any point gives the same log and result", arguments: 0..<200)
    func restoreAnywhere(seed: Int) async throws {
        var rng = SeededGenerator(seed: UInt64(seed) &* 7919 &+ 17)
        let registry = try Samples.registry()
        let (name, start, external) = Self.randomCase(&rng)
        let workflow = try registry.workflow(name)

        var reference = EngineDriver(workflow, external: external)
        reference.apply(.start(AnyEvent(type: "StartEvent", value: start)))
        await reference.runToEnd()
        #expect(reference.state.status.isFinished)

        // Interrupt after a random number of ticks, possibly several times in a row.
        var driver = EngineDriver(workflow, external: external)
        driver.apply(.start(AnyEvent(type: "StartEvent", value: start)))
        var log: [LogRecord] = []
        for _ in 0..<Int.random(in: 1...3, using: &rng) {
            for _ in 0..<Int.random(in: 0...max(1, reference.ticks), using: &rng) {
                if await !driver.advance() { break }
            }
            log += driver.log
            var restored = EngineDriver(workflow, state: try driver.snapshot(), external: driver.external)
            restored.now = driver.now
            restored.apply(.resume)
            driver = restored
        }
        await driver.runToEnd()
        log += driver.log

        #expect(log == reference.log, "seed \(seed): \(name) \(start)")
        #expect(driver.state.status == reference.state.status)
        #expect(driver.state.terminal == reference.state.terminal)
    }
}
