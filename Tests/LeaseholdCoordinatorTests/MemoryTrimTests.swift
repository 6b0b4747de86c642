import Testing

@testable import LeaseholdCoordinator

@Suite struct MemoryTrimTests {
    @Test func trimsOnceEnoughHandlersHaveLeftMemorySinceTheLastTrim() {
        var trim = MemoryTrim()
        // 256 since the last trim: trim; a wave that stopped (no change since the last check)
        // with departures not yet trimmed: trim; nothing new: nothing.
        let departedTotals = [0, 100, 255, 256, 300, 300, 300, 511, 767, 2_000, 2_000]
        let trimmed = departedTotals.map { trim.observe(departed: $0) }
        #expect(trimmed == [false, false, false, true, false, true, false, false, true, true, false])
    }
}
