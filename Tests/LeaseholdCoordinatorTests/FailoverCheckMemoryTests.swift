import LeaseholdStore
import Testing

@testable import LeaseholdCoordinator

@Suite struct FailoverCheckMemoryTests {
    typealias Key = FailoverCheckMemory.Key

    static func position(_ token: Int64, _ sequence: Int64) -> FailoverCheckAnswer.Position {
        FailoverCheckAnswer.Position(token: FencingToken(token), lastSequence: sequence)
    }

    @Test func aServerGeneratedIdIsPackedAndReadBackUnchanged() {
        var keys = Set<Key>()
        for _ in 0..<2_000 {
            let id = HandlerID.random()
            let key = Key(id)
            guard case .packed = key else {
                Issue.record("\(id) was not packed")
                continue
            }
            #expect(key.id == id)
            keys.insert(key)
        }
        #expect(keys.count == 2_000)
        // Every digit in every position, the highest and lowest included.
        for id in [
            "AAAAAAAAAAAAAAAAAAAAA", "---------------------", "ABCDEFGHIJKLMNOPQRSTU", "VWXYZabcdefghijklmnop",
            "qrstuvwxyz0123456789_", "-_9876543210zyxwvutsr", "A--------------------", "--------------------A",
            "----------A----------", "AAAAAAAAAA-AAAAAAAAAA",
        ] {
            #expect(Key(HandlerID(id)).id == HandlerID(id))
        }
        #expect(Key("----------A----------") != Key("---------A-----------"))
    }

    @Test func anyOtherIdKeepsItsText() {
        for id in [
            "a", "order-42", "AAAAAAAAAAAAAAAAAAAA", "AAAAAAAAAAAAAAAAAAAAAA", "AAAAAAAAAA.AAAAAAAAAA",
            "~AAAAAAAAAAAAAAAAAAAA",
        ] {
            #expect(Key(HandlerID(id)) == .text(id))
            #expect(Key(HandlerID(id)).id == HandlerID(id))
        }
    }

    @Test func positionsOnlyMoveForwardAcrossGenerations() {
        var positions = FailoverCheckMemory(window: .seconds(80), limit: 1_000, now: .zero)
        positions.record("h", Self.position(5, 3), at: .seconds(1))
        positions.record("h", Self.position(5, 2), at: .seconds(2))
        #expect(positions["h"] == Self.position(5, 3))
        positions.record("h", Self.position(4, 9), at: .seconds(3))
        #expect(positions["h"] == Self.position(5, 3))
        // Generations are 10 s long: later records land in newer generations, the entry moves.
        positions.record("h", Self.position(5, 2), at: .seconds(25))
        #expect(positions["h"] == Self.position(5, 3))
        positions.record("h", Self.position(6, 0), at: .seconds(35))
        #expect(positions["h"] == Self.position(6, 0))
        #expect(positions.count == 1)
        #expect(positions.all == ["h": Self.position(6, 0)])
    }

    @Test func forgetsOnlyWhatIsNoLaterThanTheToken() {
        var positions = FailoverCheckMemory(window: .seconds(80), limit: 1_000, now: .zero)
        positions.record("h", Self.position(7, 1), at: .seconds(1))
        positions.forget("h", upTo: FencingToken(6))
        #expect(positions["h"] == Self.position(7, 1))
        positions.record("k", Self.position(3, 1), at: .seconds(15))
        positions.forget("h", upTo: FencingToken(7))
        positions.forget("k", upTo: FencingToken(9))
        #expect(positions["h"] == nil)
        #expect(positions["k"] == nil)
        #expect(positions.count == 0)
    }

    @Test func anEntryIsKeptForTheWindowAndAtMostOneGenerationLonger() {
        let window = Duration.seconds(80)  // generations of 10 s
        var positions = FailoverCheckMemory(window: window, limit: 1_000_000, now: .zero)
        for second in 0..<200 {
            positions.record(HandlerID("h\(second)"), Self.position(Int64(second) + 1, 0), at: .seconds(second))
            positions.prune(at: .seconds(second))
            for earlier in 0...second {
                let age = Duration.seconds(second - earlier)
                let kept = positions[HandlerID("h\(earlier)")] != nil
                if age <= window { #expect(kept, "h\(earlier) at age \(age)") }
                if age > window + window / FailoverCheckMemory.generationCount {
                    #expect(!kept, "h\(earlier) at age \(age)")
                }
            }
        }
    }

    @Test func atMostAboutTheLimitIsKeptTheOldestGoingFirst() {
        var positions = FailoverCheckMemory(window: .seconds(600), limit: 800, now: .zero)
        for index in 0..<10_000 {
            positions.record(HandlerID.random(), Self.position(Int64(index) + 1, 0), at: .milliseconds(index))
            positions.prune(at: .milliseconds(index))
            #expect(positions.count <= 800 + 800 / FailoverCheckMemory.generationCount)
        }
        let kept = positions.all.values.map(\.token.rawValue)
        #expect(kept.count >= 800)
        // What is kept is the newest: no gap, up to the last recorded.
        #expect(kept.max() == 10_000)
        #expect(Set(kept) == Set((10_001 - Int64(kept.count))...10_000))
    }

    /// Long-lived handlers checkpointing again and again move to the newest generation each time:
    /// the emptied older ones must not pile up nor keep their tables' capacity.
    @Test func handlersRecordedAgainAndAgainKeepItSmall() {
        let window = Duration.seconds(600)
        var positions = FailoverCheckMemory(window: window, limit: 800, now: .zero)
        let ids = (0..<200).map { _ in HandlerID.random() }
        var now = Duration.zero
        for round in 0..<300 {
            for id in ids {
                now += .milliseconds(10)
                positions.record(id, Self.position(1, Int64(round)), at: now)
            }
            positions.prune(at: now)
            #expect(positions.generationsHeld <= 2 * FailoverCheckMemory.generationCount + 1)
            #expect(positions.slotsHeld <= 4 * 800 + 64 * positions.generationsHeld)
        }
        #expect(positions.count == 200)
        #expect(ids.allSatisfy { positions[$0] == Self.position(1, 299) })
        // Kept for the window after their last record, and gone one generation after it.
        let lastRoundBegan = now - .milliseconds(10 * 199)
        positions.prune(at: lastRoundBegan + window)
        #expect(positions.count == 200)
        positions.prune(at: now + window + window / FailoverCheckMemory.generationCount + .seconds(1))
        #expect(positions.count == 0)
    }

    @Test func startingAfreshForgetsEverything() {
        var positions = FailoverCheckMemory(window: .seconds(80), limit: 1_000, now: .zero)
        for index in 0..<50 {
            positions.record(HandlerID.random(), Self.position(1, Int64(index)), at: .seconds(index))
        }
        positions.removeAll(at: .seconds(60))
        #expect(positions.count == 0)
        #expect(positions.all.isEmpty)
    }
}
