/// The limits every value entering a handler is held to, so that no valid input can trap a
/// replica: a delay `Duration.seconds` cannot hold, or a value nested deeper than the store's
/// JSON coders read back, is refused or clamped where it enters instead of where it would trap.
public enum Bounds {
    /// How deep a value a request or a step may hand in. The store wraps a value in up to ~12
    /// levels of its own (snapshot → timers → retry → run → event → a fan-in's `{"events": […]}`)
    /// and `JSONDecoder`, which reads snapshots back, refuses more than 512 levels in all: 256
    /// leaves room to spare, and recursion over a value this deep stays far inside a thread's stack.
    public static let maximumDepth = 256

    /// The longest durable delay (timer, retry back-off, workflow timeout): ten years. Longer is
    /// clamped; `Duration.seconds` traps on values above ~9.2e18 s, and a deadline that far is
    /// a mistake in all but name.
    public static let longestDelay: Double = 10 * 365.25 * 86_400

    /// `seconds` as a delay that can be armed: NaN and negative become 0, +∞ and anything over
    /// `longestDelay` become `longestDelay`.
    public static func delay(_ seconds: Double) -> Double {
        guard !seconds.isNaN else { return 0 }
        return min(max(seconds, 0), longestDelay)
    }
}

extension JSONValue {
    /// How many arrays and objects deep the value is (a scalar is 0). Walks the value with an
    /// explicit stack: a value a step built in memory may be nested far deeper than recursion
    /// could follow, and this is what finds out. Stops counting past `limit`.
    public func depth(upTo limit: Int = .max) -> Int {
        var deepest = 0
        var pending: [(JSONValue, Int)] = [(self, 0)]
        while let (value, level) = pending.popLast() {
            switch value {
            case .array(let items):
                deepest = max(deepest, level + 1)
                if deepest > limit { return deepest }
                for item in items { pending.append((item, level + 1)) }
            case .object(let fields):
                deepest = max(deepest, level + 1)
                if deepest > limit { return deepest }
                for item in fields.values { pending.append((item, level + 1)) }
            default:
                continue
            }
        }
        return deepest
    }

    /// Why this value cannot enter a handler (too deep, or a number JSON cannot carry), or nil.
    public var boundsProblem: String? {
        if depth(upTo: Bounds.maximumDepth) > Bounds.maximumDepth {
            return "nested deeper than \(Bounds.maximumDepth) levels"
        }
        if !isFinite { return "holds a number that is not finite (NaN or infinity)" }
        return nil
    }
}

extension StepOutput {
    /// Why what a step produced cannot be kept, or nil: every value it sends, streams, stores or
    /// schedules must be one the store can write and read back. A step whose output fails this
    /// fails (and is retried as its policy says), instead of a checkpoint that can never be written.
    public var boundsProblem: String? {
        func check(_ value: JSONValue, _ what: String) -> String? {
            value.boundsProblem.map { "its \(what) \($0)" }
        }
        for event in sent { if let problem = check(event.value, "sent event '\(event.type)'") { return problem } }
        for event in streamed {
            if let problem = check(event.value, "streamed event '\(event.type)'") { return problem }
        }
        for (key, value) in stateChanges {
            if let problem = check(value, "context key '\(key)'") { return problem }
        }
        for timer in timers {
            if let problem = check(timer.event.value, "timer event '\(timer.event.type)'") { return problem }
        }
        if let prompt = wait?.prompt, let problem = check(prompt.value, "prompt '\(prompt.type)'") { return problem }
        return nil
    }
}
