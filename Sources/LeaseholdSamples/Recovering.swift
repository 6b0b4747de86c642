import LeaseholdEngine

extension Samples {
    /// An error of the `recovering` sample's fetch.
    public struct Unreachable: Error, CustomStringConvertible {
        /// Which try failed (1-based).
        public var attempt: Int
        /// What a client sees.
        public var description: String { "source unreachable (try \(attempt))" }
    }

    static let attempted = EventType(
        "Attempted", fields: [FieldSpec("retry_number", .integer), FieldSpec("last_error", .any)])

    /// `{"fail_times": int ≥ 0}` → the error-handling trio of the Python API. `fetch` fails its
    /// first `fail_times` tries and is tried 3 times; each try streams `Attempted` with its
    /// `retryInfo` (retry number, the previous try's error). When it succeeds the result is
    /// `{"fetched_on_try": n}`; when its retries run out, the `fallback` `catch_error` step gets
    /// the `StepFailedEvent` and completes the run with `{"recovered_from": step, "attempts": n,
    /// "exception_type": …, "exception_message": …}`.
    public static func recovering() throws -> Workflow {
        try Workflow(
            name: "recovering",
            start: [FieldSpec("fail_times", .integer(minimum: 0))],
            events: [attempted],
            steps: [
                Step(
                    "fetch", accepts: ["StartEvent"], emits: ["StopEvent"], streams: ["Attempted"],
                    retry: RetryPolicy(maxAttempts: 3, initialDelay: 0.01, multiplier: 2, maxDelay: 0.1)
                ) { event, context in
                    let info = context.retryInfo
                    context.write(
                        AnyEvent(
                            type: "Attempted",
                            value: [
                                "retry_number": .int(info.retryNumber),
                                "last_error": info.lastError.map { .string($0.message) } ?? .null,
                            ]))
                    let failTimes = event.value["fail_times"]?.intValue ?? 0
                    if info.retryNumber < failTimes { throw Unreachable(attempt: info.retryNumber + 1) }
                    context.stop(["fetched_on_try": .int(info.retryNumber + 1)])
                },
                Step.catchError("fallback", for: ["fetch"]) { failed, context in
                    let exception = failed.value["exception"] ?? [:]
                    context.stop([
                        "recovered_from": failed.value["step_name"] ?? .null,
                        "attempts": failed.value["attempts"] ?? .null,
                        "exception_type": exception["exception_type"] ?? .null,
                        "exception_message": exception["exception_message"] ?? .null,
                    ])
                },
            ])
    }
}
