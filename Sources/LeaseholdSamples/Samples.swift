import LeaseholdEngine

/// The sample workflows every build registers (docs/wire.md, "Sample workflows").
/// They double as examples of the workflow-definition API.
public enum Samples {
    /// - Parameter ledger: where the `ledger` sample posts (the cluster passes its database's
    ///   `PostgresLedger`; a single process keeps postings in memory).
    public static func registry(ledger: any FencedLedger = InMemoryLedger()) throws -> WorkflowRegistry {
        try WorkflowRegistry(all(ledger: ledger))
    }

    /// Every sample, in the order `registry(ledger:)` registers them.
    public static func all(ledger: any FencedLedger = InMemoryLedger()) throws -> [Workflow] {
        [
            try echo(), try counter(), try approval(), try fanout(), try timer(), try flaky(),
            try Samples.ledger(ledger),
            try recovering(), try nested(),
        ]
    }

    /// `{"message": str}` → stops at once with `message`.
    public static func echo() throws -> Workflow {
        try Workflow(
            name: "echo",
            start: [FieldSpec("message", .string)],
            steps: [
                Step("echo", accepts: ["StartEvent"], emits: ["StopEvent"]) { event, context in
                    context.stop(event.value["message"] ?? .null)
                }
            ])
    }

    /// The `counter` sample's tick, streamed and sent once per count.
    public struct Tick: Event {
        /// Its type: `Tick` with an integer `n`.
        public static let eventType = EventType("Tick", fields: [FieldSpec("n", .integer)])
        /// The count reached, from 1.
        public var n: Int
    }

    /// `{"count_to": int ≥ 0}` → streams `Tick {"n": i}` for i in 1…count_to, one step run per tick.
    /// An optional `tick_ms` makes each tick take that long (for drills and failover tests).
    public static func counter() throws -> Workflow {
        try Workflow(
            name: "counter",
            start: [
                FieldSpec("count_to", .integer(minimum: 0)),
                FieldSpec("tick_ms", .integer(minimum: 0), required: false),
            ],
            events: [Tick.eventType],
            steps: [
                Step("count", accepts: ["StartEvent", "Tick"], emits: ["Tick", "StopEvent"], streams: ["Tick"]) {
                    event, context in
                    let n: Int
                    let target: Int
                    if event.type == "StartEvent" {
                        n = 0
                        target = event.value["count_to"]?.intValue ?? 0
                        context.set("count_to", .int(target))
                        context.set("tick_ms", event.value["tick_ms"] ?? 0)
                    } else {
                        n = try event.decode(Tick.self).n
                        target = context.get("count_to")?.intValue ?? 0
                    }
                    if let pause = context.get("tick_ms")?.intValue, pause > 0 {
                        try await Task.sleep(for: .milliseconds(pause))
                    }
                    if n >= target {
                        context.stop(.int(target))
                    } else {
                        try context.write(Tick(n: n + 1))
                        try context.send(Tick(n: n + 1))
                    }
                }
            ])
    }

    /// The prompt the `approval` sample streams, with the text to show in `prefix`.
    public static let inputRequired = EventType(
        "InputRequiredEvent", fields: [FieldSpec("prefix", .string)], module: "workflows.events")
    /// The answer the `approval` sample waits for, in `response`.
    public static let humanResponse = EventType(
        "HumanResponseEvent", fields: [FieldSpec("response", .string)], module: "workflows.events")

    /// `{"request": str}` → streams `InputRequiredEvent`, waits (no limit) for `HumanResponseEvent`.
    public static func approval() throws -> Workflow {
        try Workflow(
            name: "approval",
            start: [FieldSpec("request", .string)],
            events: [inputRequired],
            external: [humanResponse],
            steps: [
                Step(
                    "ask", accepts: ["StartEvent"], emits: ["StopEvent"], streams: ["InputRequiredEvent"],
                    waitsFor: ["HumanResponseEvent"]
                ) { event, context in
                    let request = event.value["request"] ?? .null
                    let prompt = AnyEvent(
                        type: "InputRequiredEvent",
                        value: ["prefix": .string("Approve \(request.stringValue ?? "")? ")])
                    let answer = try context.waitForEvent("HumanResponseEvent", prompt: prompt)
                    context.stop(["request": request, "response": answer.value["response"] ?? .null])
                }
            ])
    }

    static let item = EventType("Item", fields: [FieldSpec("value", .integer)])
    static let doubled = EventType("Doubled", fields: [FieldSpec("value", .integer)])

    /// `{"items": [int]}` → one worker run per item (doubles it), collects all, stops with the sum.
    public static func fanout() throws -> Workflow {
        try Workflow(
            name: "fanout",
            start: [FieldSpec("items", .array(.integer))],
            events: [item, doubled],
            steps: [
                Step("split", accepts: ["StartEvent"], emits: ["Item", "StopEvent"]) { event, context in
                    let items = event.value["items"]?.arrayValue ?? []
                    context.set("expected", .int(items.count))
                    if items.isEmpty { context.stop(0) }
                    for value in items { context.send(AnyEvent(type: "Item", value: ["value": value])) }
                },
                Step("double", accepts: ["Item"], emits: ["Doubled"]) { event, context in
                    let value = event.value["value"]?.intValue ?? 0
                    let (doubled, overflow) = value.multipliedReportingOverflow(by: 2)
                    if overflow { throw ArithmeticOverflow(what: "\(value) * 2") }
                    context.send(AnyEvent(type: "Doubled", value: ["value": .int(doubled)]))
                },
                Step(
                    "collect", accepts: [], emits: ["StopEvent"], fanIn: FanIn("Doubled", count: .stateKey("expected"))
                ) { event, context in
                    var sum = 0
                    for value in event.value["events"]?.arrayValue ?? [] {
                        let (next, overflow) = sum.addingReportingOverflow(value["value"]?.intValue ?? 0)
                        if overflow { throw ArithmeticOverflow(what: "the sum of the doubled items") }
                        sum = next
                    }
                    context.stop(.int(sum))
                },
            ])
    }

    static let timerRang = EventType("TimerRang")

    /// `{"seconds": number in 0…Bounds.longestDelay}` → waits on a durable timer (survives hibernation and failover), stops with "rang".
    public static func timer() throws -> Workflow {
        try Workflow(
            name: "timer",
            start: [FieldSpec("seconds", .number(minimum: 0, maximum: Bounds.longestDelay))],
            events: [timerRang],
            steps: [
                Step("arm", accepts: ["StartEvent"], emits: ["TimerRang"]) { event, context in
                    let seconds = event.value["seconds"]?.doubleValue ?? 0
                    context.schedule(AnyEvent(type: "TimerRang"), after: seconds)
                },
                Step("ring", accepts: ["TimerRang"], emits: ["StopEvent"]) { _, context in
                    context.stop("rang")
                },
            ])
    }

    /// A sample's arithmetic that would overflow: the step fails (and with it the handler), where
    /// unchecked Swift arithmetic would trap and end the replica.
    public struct ArithmeticOverflow: Error, CustomStringConvertible {
        /// The computation that overflowed.
        public var what: String
        /// Names the computation that overflowed.
        public var description: String { "arithmetic overflow in \(what)" }
    }

    /// The error the `flaky` sample throws on each try it is told to fail.
    public struct FlakyFailure: Error, CustomStringConvertible {
        /// The try that failed, from 1.
        public var attempt: Int
        /// Says which try failed.
        public var description: String { "flaky failure on attempt \(attempt)" }
    }

    /// `{"fail_times": int}` → a step that throws `fail_times` times, retried with back-off; result = attempts.
    public static func flaky() throws -> Workflow {
        try Workflow(
            name: "flaky",
            start: [FieldSpec("fail_times", .integer(minimum: 0))],
            steps: [
                Step(
                    "attempt", accepts: ["StartEvent"], emits: ["StopEvent"],
                    retry: RetryPolicy(maxAttempts: 5, initialDelay: 0.01, multiplier: 2, maxDelay: 0.2)
                ) { event, context in
                    let failTimes = event.value["fail_times"]?.intValue ?? 0
                    if context.attempt <= failTimes { throw FlakyFailure(attempt: context.attempt) }
                    context.stop(.int(context.attempt))
                }
            ])
    }
}
