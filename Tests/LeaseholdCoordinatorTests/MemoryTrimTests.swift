@testable import LeaseholdCoordinator
import Testing

@Suite struct MemoryTrimTests {
    @Test func trimsOnceAThousandHandlersHaveLeftSinceThePeak() {
        var trim = MemoryTrim()
        let counts = [0, 5_000, 4_001, 4_000, 3_500, 4_200, 3_200]
        let trimmed = counts.map { trim.observe(liveHandlers: $0) }
        // 999 left: not yet; 1,000 left since the peak of 5,000: trim; the peak is then 4,000,
        // raised to 4,200; 3,200 is 1,000 below it: trim.
        #expect(trimmed == [false, false, false, true, false, false, true])
    }
}
