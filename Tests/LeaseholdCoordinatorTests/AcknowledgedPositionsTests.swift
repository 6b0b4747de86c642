import LeaseholdStore
import Testing

@testable import LeaseholdCoordinator

@Suite struct AcknowledgedPositionsTests {
    typealias Key = AcknowledgedPositions.Key

    static func position(_ token: Int64, _ sequence: Int64) -> StoreAudit.Position {
        StoreAudit.Position(token: FencingToken(token), lastSequence: sequence)
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
        var positions = AcknowledgedPositions(window: .seconds(80), limit: 1_000, now: .zero)
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
        var positions = AcknowledgedPositions(window: .seconds(80), limit: 1_000, now: .zero)
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
        var positions = AcknowledgedPositions(window: window, limit: 1_000_000, now: .zero)
        for second in 0..<200 {
            positions.record(HandlerID("h\(second)"), Self.position(Int64(second) + 1, 0), at: .seconds(second))
            positions.prune(at: .seconds(second))
            for earlier in 0...second {
                let age = Duration.seconds(second - earlier)
                let kept = positions[HandlerID("h\(earlier)")] != nil
                if age <= window { #expect(kept, "h\(earlier) at age \(age)") }
                if age > window + window / AcknowledgedPositions.generationCount {
                    #expect(!kept, "h\(earlier) at age \(age)")
                }
            }
        }
    }

    @Test func atMostAboutTheLimitIsKeptTheOldestGoingFirst() {
        var positions = AcknowledgedPositions(window: .seconds(600), limit: 800, now: .zero)
        for index in 0..<10_000 {
            positions.record(HandlerID.random(), Self.position(Int64(index) + 1, 0), at: .milliseconds(index))
            positions.prune(at: .milliseconds(index))
            #expect(positions.count <= 800 + 800 / AcknowledgedPositions.generationCount)
        }
        let kept = positions.all.values.map(\.token.rawValue)
        #expect(kept.count >= 800)
        // What is kept is the newest: no gap, up to the last recorded.
        #expect(kept.max() == 10_000)
        #expect(Set(kept) == Set((10_001 - Int64(kept.count))...10_000))
    }

    @Test func startingAfreshForgetsEverything() {
        var positions = AcknowledgedPositions(window: .seconds(80), limit: 1_000, now: .zero)
        for index in 0..<50 {
            positions.record(HandlerID.random(), Self.position(1, Int64(index)), at: .seconds(index))
        }
        positions.removeAll(at: .seconds(60))
        #expect(positions.count == 0)
        #expect(positions.all.isEmpty)
    }
}
