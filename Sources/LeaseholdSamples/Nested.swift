import LeaseholdEngine

extension Samples {
    /// `{"children": int 1…5, "count_to": int ≥ 0, "tick_ms": int?}` → nested workflows: the
    /// `delegate` step runs `children` `counter` workflows one after another, each a handler of its
    /// own (`StepContext.runWorkflow`), and stops with `{"total": the sum of their results}`.
    /// The handler waits (and may hibernate) while a child runs; a failover of either runs on
    /// without starting a child twice.
    public static func nested() throws -> Workflow {
        try Workflow(
            name: "nested",
            start: [
                FieldSpec("children", .integer(minimum: 1)), FieldSpec("count_to", .integer(minimum: 0)),
                FieldSpec("tick_ms", .integer(minimum: 0), required: false),
            ],
            steps: [
                Step("delegate", accepts: ["StartEvent"], emits: ["StopEvent"]) { event, context in
                    let children = min(5, event.value["children"]?.intValue ?? 1)
                    var start: [String: JSONValue] = ["count_to": event.value["count_to"] ?? 0]
                    if let tick = event.value["tick_ms"] { start["tick_ms"] = tick }
                    var total = 0
                    for _ in 0..<children {
                        let result = try context.runWorkflow("counter", start: .object(start))
                        let (sum, overflow) = total.addingReportingOverflow(result.intValue ?? 0)
                        if overflow { throw ArithmeticOverflow(what: "the children's total") }
                        total = sum
                    }
                    context.stop(["total": .int(total)])
                }
            ])
    }
}
