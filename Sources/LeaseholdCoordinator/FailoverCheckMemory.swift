import LeaseholdStore

/// What the database acknowledged to this replica lately: each handler's fencing token and last
/// durable sequence, for the check after a database failover (`LeaseKeeper+FailoverCheck.swift`).
///
/// It outlives the handlers it describes (a hibernated or finished handler is exactly what that
/// check must cover), so it is built to cost little per handler and nothing to age:
///
/// - a handler id the server generated (21 characters of the 64-letter alphabet, 126 bits) is
///   kept as two words, owning no heap memory: a heap string per entry, alive for minutes among
///   short-lived allocations, would pin its pages so that the allocator could give none back;
/// - entries are kept in generations, each one `window / generationCount` long (or
///   `limit / generationCount` entries, whichever comes first): an entry is kept at least
///   `window` and at most one generation longer, and aging drops a whole generation instead of
///   copying or sorting the table at every renewal;
/// - at most about `limit` entries: beyond it the oldest generation goes first.
struct FailoverCheckMemory {
    static let generationCount = 8

    let window: Duration
    let limit: Int
    /// Newest first; each with the monotonic times it was started and last recorded into.
    private var generations: [Generation]

    struct Generation {
        var started: Duration
        var last: Duration
        var entries: [Key: FailoverCheckAnswer.Position] = [:]
    }

    init(window: Duration, limit: Int, now: Duration) {
        self.window = window
        self.limit = limit
        generations = [Generation(started: now, last: now)]
    }

    var count: Int { generations.reduce(0) { $0 + $1.entries.count } }
    /// How many generations there are, and the slots their tables hold (for tests).
    var generationsHeld: Int { generations.count }
    var slotsHeld: Int { generations.reduce(0) { $0 + $1.entries.capacity } }

    /// Every remembered position, by handler.
    var all: [HandlerID: FailoverCheckAnswer.Position] {
        var all: [HandlerID: FailoverCheckAnswer.Position] = [:]
        all.reserveCapacity(count)
        for generation in generations {
            for (key, position) in generation.entries { all[key.id] = position }
        }
        return all
    }

    subscript(id: HandlerID) -> FailoverCheckAnswer.Position? {
        let key = Key(id)
        for generation in generations {
            if let position = generation.entries[key] { return position }
        }
        return nil
    }

    /// Remembers `position` for `id` unless a later one (higher token, or the same token with more
    /// events) is remembered already; positions only move forward.
    mutating func record(_ id: HandlerID, _ position: FailoverCheckAnswer.Position, at now: Duration) {
        startGenerationIfDue(at: now)
        generations[0].last = max(generations[0].last, now)
        let key = Key(id)
        if let current = generations[0].entries[key] {
            if !position.isBehind(current) { generations[0].entries[key] = position }
            return
        }
        for index in generations.indices.dropFirst() {
            guard let current = generations[index].entries[key] else { continue }
            if position.isBehind(current) { return }
            generations[index].entries[key] = nil
            break
        }
        generations[0].entries[key] = position
    }

    /// Forgets `id` when what is remembered of it is no later than `token`.
    mutating func forget(_ id: HandlerID, upTo token: FencingToken) {
        let key = Key(id)
        for index in generations.indices {
            guard let current = generations[index].entries[key] else { continue }
            if current.token <= token { generations[index].entries[key] = nil }
            return
        }
    }

    /// Drops the generations older than `window` and, beyond `limit`, the oldest ones; then keeps
    /// the rest small (see `tidy`).
    /// - Returns: how many entries were dropped.
    @discardableResult
    mutating func prune(at now: Duration) -> Int {
        var dropped = 0
        // Every entry of a generation was recorded at or before its `last`.
        while let oldest = generations.last, oldest.last < now - window {
            dropped += generations.removeLast().entries.count
        }
        if generations.isEmpty { generations = [Generation(started: now, last: now)] }
        var total = count
        while generations.count > 1, total > limit {
            let removed = generations.removeLast().entries.count
            dropped += removed
            total -= removed
        }
        tidy()
        return dropped
    }

    /// Entries re-recorded move to the newest generation, leaving older ones emptied, and a
    /// dictionary never gives back its capacity by itself; under many re-recorded handlers new
    /// generations also start often (one per `limit / generationCount` records). So: emptied
    /// generations go, sparse ones are rebuilt to their size, and beyond twice `generationCount`
    /// the two oldest are merged (under the newer one's `last`). None of these drops an entry
    /// sooner.
    private mutating func tidy() {
        guard !generations.isEmpty else { return }
        generations = [generations[0]] + generations.dropFirst().filter { !$0.entries.isEmpty }
        for index in generations.indices.dropFirst()
        where generations[index].entries.capacity > 64
            && generations[index].entries.count * 4 < generations[index].entries.capacity
        {
            generations[index].entries = Self.rebuilt(generations[index].entries, adding: [:])
        }
        while generations.count > 2 * Self.generationCount {
            let oldest = generations.removeLast()
            let last = generations.count - 1
            generations[last] = Generation(
                started: oldest.started, last: generations[last].last,
                entries: Self.rebuilt(oldest.entries, adding: generations[last].entries))
        }
    }

    private static func rebuilt(
        _ entries: [Key: FailoverCheckAnswer.Position], adding more: [Key: FailoverCheckAnswer.Position]
    ) -> [Key: FailoverCheckAnswer.Position] {
        var result = [Key: FailoverCheckAnswer.Position](minimumCapacity: entries.count + more.count)
        for (key, position) in entries { result[key] = position }
        for (key, position) in more { result[key] = position }
        return result
    }

    mutating func removeAll(at now: Duration) {
        generations = [Generation(started: now, last: now)]
    }

    private mutating func startGenerationIfDue(at now: Duration) {
        let span = window / Self.generationCount
        let full = max(1, limit / Self.generationCount)
        guard now - generations[0].started >= span || generations[0].entries.count >= full else { return }
        generations.insert(Generation(started: now, last: now), at: 0)
    }

}

extension FailoverCheckMemory {
    /// A handler id as a dictionary key: a server-generated id packed into two words; any other id
    /// as its text (Swift keeps text of up to 15 bytes inline, so short client ids own no heap
    /// memory either).
    enum Key: Hashable {
        case packed(UInt64, UInt64)
        case text(String)

        /// The alphabet of `HandlerID.random()`, a digit's value its position.
        private static let digits: [UInt8] = Array(HandlerID.randomAlphabet.utf8)
        private static let values: [Int8] = {
            var values = [Int8](repeating: -1, count: 256)
            for (value, digit) in digits.enumerated() { values[Int(digit)] = Int8(value) }
            return values
        }()

        init(_ id: HandlerID) {
            let utf8 = id.rawValue.utf8
            guard utf8.count == 21 else {
                self = .text(id.rawValue)
                return
            }
            // 21 six-bit digits: the first 10 (60 bits) in one word, the other 11 (66 bits: the
            // first digit's top two bits go to the first word's spare bits) in the other.
            var high: UInt64 = 0
            var low: UInt64 = 0
            for (index, byte) in utf8.enumerated() {
                let value = Self.values[Int(byte)]
                guard value >= 0 else {
                    self = .text(id.rawValue)
                    return
                }
                if index < 10 {
                    high = high << 6 | UInt64(value)
                } else if index == 10 {
                    high = high << 2 | UInt64(value) >> 4
                    low = UInt64(value) & 0xF
                } else {
                    low = low << 6 | UInt64(value)
                }
            }
            self = .packed(high, low)
        }

        var id: HandlerID {
            switch self {
            case .text(let text):
                return HandlerID(text)
            case .packed(let high, let low):
                var bytes = [UInt8](repeating: 0, count: 21)
                var word = low
                for index in stride(from: 20, through: 11, by: -1) {
                    bytes[index] = Self.digits[Int(word & 0x3F)]
                    word >>= 6
                }
                let tenth = (high & 0x3) << 4 | word & 0xF
                bytes[10] = Self.digits[Int(tenth)]
                word = high >> 2
                for index in stride(from: 9, through: 0, by: -1) {
                    bytes[index] = Self.digits[Int(word & 0x3F)]
                    word >>= 6
                }
                return HandlerID(String(decoding: bytes, as: UTF8.self))
            }
        }
    }
}
