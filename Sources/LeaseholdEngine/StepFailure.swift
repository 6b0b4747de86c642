import Foundation

/// Why a step run failed, as the engine keeps it: the error's type and its message. Stored in
/// snapshots (a retry's last error) and sent in `StepFailedEvent` and `WorkflowFailedEvent` as
/// `{"exception_type", "exception_message"}`, as the Python server does.
public struct StepError: Error, Sendable, Hashable, Codable, CustomStringConvertible {
    /// The error's type, fully qualified (`String(reflecting:)`), e.g. `MyApp.Unavailable`.
    public var type: String
    /// What the error says (`"\(error)"`).
    public var message: String

    /// - Parameters:
    ///   - type: the error's type name.
    ///   - message: what it says.
    public init(type: String, message: String) {
        self.type = type
        self.message = message
    }

    /// The type and description of `error` (a `StepError` is kept as it is).
    public init(_ error: any Error) {
        if let error = error as? StepError {
            self = error
        } else {
            self.init(type: String(reflecting: Swift.type(of: error)), message: "\(error)")
        }
    }

    /// A failure the engine or runtime names itself (an unknown step, an output too large).
    public static func engine(_ message: String) -> StepError {
        StepError(type: "LeaseholdEngine.EngineFailure", message: message)
    }

    /// The message.
    public var description: String { message }

    /// The wire form: `{"exception_type", "exception_message"}`.
    public var json: JSONValue { ["exception_type": .string(type), "exception_message": .string(message)] }
}

/// Where a step run is in its retries, as `StepContext.retryInfo` gives it (Python's
/// `ctx.retry_info()`). Computed from the run's durable record, so it is the same on every replica
/// and after a failover: a retry that runs elsewhere still knows it is a retry and why.
public struct RetryInfo: Sendable, Hashable {
    /// 0 on the first try, 1 on the first retry, …
    public var retryNumber: Int
    /// Seconds from the first try's start to this try's start (0 on the first try).
    public var elapsedSeconds: Double
    /// The error of the previous try (nil on the first try).
    public var lastError: StepError?
    /// When the previous try failed, in seconds since 1970 (nil on the first try).
    public var lastFailedAt: Double?

    /// - Parameters:
    ///   - retryNumber: 0 on the first try.
    ///   - elapsedSeconds: from the first try's start to this one's.
    ///   - lastError: the previous try's error.
    ///   - lastFailedAt: when the previous try failed (seconds since 1970).
    public init(retryNumber: Int, elapsedSeconds: Double = 0, lastError: StepError? = nil, lastFailedAt: Double? = nil)
    {
        self.retryNumber = retryNumber
        self.elapsedSeconds = elapsedSeconds
        self.lastError = lastError
        self.lastFailedAt = lastFailedAt
    }

    /// The retry information of `run`.
    public init(_ run: StepRun) {
        let elapsed = run.startedAt.flatMap { started in run.firstAttemptAt.map { max(0, started - $0) } } ?? 0
        self.init(
            retryNumber: max(0, run.attempt - 1), elapsedSeconds: run.attempt > 1 ? elapsed : 0,
            lastError: run.lastError, lastFailedAt: run.lastFailedAt)
    }
}

/// Which failed steps a `catch_error` step handles (`Step.catchError`).
public struct CatchErrorScope: Sendable, Hashable {
    /// The steps it handles; nil for every step no scoped handler claims (at most one such
    /// wildcard per workflow).
    public var steps: [String]?
    /// How often it may recover one chain of events: a failure past this budget, in events
    /// descended from its own recovery, fails the workflow.
    public var maxRecoveries: Int
}

extension EventType {
    /// What a `catch_error` step receives when a step failed for good (its retries used up).
    ///
    /// Fields as in Python's `StepFailedEvent`: `step_name`, `input_event` (`{"type", "value"}`),
    /// `exception` (`{"exception_type", "exception_message"}`), `attempts`, `elapsed_seconds` and
    /// `failed_at` (ISO 8601, UTC).
    public static let stepFailed = EventType(
        "StepFailedEvent",
        fields: [
            FieldSpec("step_name", .string), FieldSpec("input_event", .any), FieldSpec("exception", .any),
            FieldSpec("attempts", .integer), FieldSpec("elapsed_seconds", .number), FieldSpec("failed_at", .string),
        ], module: "workflows.events")
}

/// ISO 8601 in UTC with milliseconds of `seconds` since 1970, as `failed_at` carries it.
func iso8601(_ seconds: Double) -> String {
    let formatter = ISO8601DateFormatter()
    formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
    formatter.timeZone = TimeZone(identifier: "UTC")
    return formatter.string(from: Date(timeIntervalSince1970: seconds))
}
