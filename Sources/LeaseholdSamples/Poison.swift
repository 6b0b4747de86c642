import LeaseholdEngine

#if DEBUG
    extension Samples {
        /// `{"mode": "overflow" | "precondition", "value": int}` → a step that traps on every
        /// attempt, the way user code does: unchecked arithmetic that overflows (with a `value`
        /// above 2^62), or a failed precondition. For the crash-containment tests: registered by
        /// debug builds only (`leasehold`'s `workflows(ledger:)`), never by the shipped binary.
        public static func poison() throws -> Workflow {
            try Workflow(
                name: "poison",
                start: [FieldSpec("mode", .string), FieldSpec("value", .integer, required: false)],
                steps: [
                    Step("explode", accepts: ["StartEvent"], emits: ["StopEvent"]) { event, context in
                        let value = event.value["value"]?.intValue ?? Int.max
                        switch event.value["mode"]?.stringValue {
                        case "precondition":
                            precondition(value < 0, "poison: a precondition that never holds")
                            context.stop(.int(value))
                        default:
                            context.stop(.int(value * 2))  // traps: the unchecked overflow under test
                        }
                    }
                ])
        }
    }
#endif
