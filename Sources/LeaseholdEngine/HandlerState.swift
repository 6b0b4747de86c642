/// Where a handler is in its life. A hibernated handler is `running`: it waits, it is not gone.
public enum HandlerStatus: String, Sendable, Hashable, Codable, CaseIterable {
    case running
    case completed
    case failed
    case cancelled

    /// Whether the handler has ended (completed, failed or cancelled).
    public var isFinished: Bool { self != .running }
}

/// One run of one step with one input event.
public struct StepRun: Sendable, Hashable, Codable {
    /// The run's id, unique within its handler (`HandlerState.nextRunID`).
    public var id: Int
    /// The name of the step this run executes.
    public var step: String
    /// The input event the step runs with.
    public var event: AnyEvent
    /// Which try this is: 1 for the first, 2 for the first retry, …
    public var attempt: Int
    /// The external event a `waitForEvent` in this run returns.
    public var received: AnyEvent?
    // Retries and recoveries (added after 0.1.0: optional, so older snapshots load).
    /// When this try started (seconds since 1970).
    public var startedAt: Double?
    /// When the first try of this run started.
    public var firstAttemptAt: Double?
    /// The previous try's error and when it failed.
    public var lastError: StepError?
    /// When the previous try failed (seconds since 1970).
    public var lastFailedAt: Double?
    /// Recoveries by `catch_error` step in the chain of events this run descends from (Python's
    /// `recovery_counts`): what bounds `maxRecoveries`.
    public var recoveries: [String: Int]?
    /// The id of the first run in a chain of re-runs of one step (after waits): the same across
    /// them, so the children a run asks for keep their ids (`StepContext.runWorkflow`).
    public var origin: Int?
    /// The ends of the children this run (or an earlier run of its chain) asked for, by child id.
    public var children: [String: AnyEvent]?

    /// A run of `step` with `event`; the retry, recovery and child fields start nil.
    public init(id: Int, step: String, event: AnyEvent, attempt: Int, received: AnyEvent?) {
        self.id = id
        self.step = step
        self.event = event
        self.attempt = attempt
        self.received = received
    }
}

/// A step run that ended waiting for an external event; it is repeated when one arrives.
public struct Waiter: Sendable, Hashable, Codable {
    /// The run to repeat when the event arrives.
    public var run: StepRun
    /// The type of the external event it waits for.
    public var eventType: String
    /// For a wait on a child workflow: the child (re-created on resume, idempotently).
    public var child: ChildRequest?

    /// A wait of `run` for an event of `eventType`.
    public init(run: StepRun, eventType: String) {
        self.run = run
        self.eventType = eventType
    }
}

/// A timer kept in the state, so it survives snapshots, hibernation and failover.
public struct DurableTimer: Sendable, Hashable, Codable {
    /// What a timer does when it fires.
    public enum Action: Sendable, Hashable, Codable {
        case deliver(AnyEvent)
        case retry(StepRun)
        case workflowTimeout
    }

    /// The timer's id, unique within its handler (`HandlerState.nextTimerID`).
    public var id: Int
    /// Seconds since 1970 (wall clock: a deadline must mean the same on every replica).
    public var deadline: Double
    /// What happens when it fires.
    public var action: Action

    /// A timer that runs `action` at `deadline`.
    public init(id: Int, deadline: Double, action: Action) {
        self.id = id
        self.deadline = deadline
        self.action = action
    }
}

/// The whole of a handler's state. A snapshot is this value encoded; nothing else is needed to
/// resume a handler on any replica.
public struct HandlerState: Sendable, Hashable, Codable {
    /// The workflow the handler runs.
    public var workflowName: String
    /// Where the handler is in its life.
    public var status: HandlerStatus = .running
    /// Whether the start event has been dispatched.
    public var started = false
    /// The terminal event once finished.
    public var terminal: AnyEvent?
    /// Why the handler failed; nil unless it failed.
    public var error: String?
    /// The context state steps read and write (`StepContext.get` and `set`).
    public var context: [String: JSONValue] = [:]
    /// Runs started and not yet finished, in start order. After a restore they are run again.
    public var inFlight: [StepRun] = []
    /// Runs waiting for an external event or a child workflow.
    public var waiters: [Waiter] = []
    /// External events that arrived before any step waited for them; the next wait takes them.
    public var pendingExternal: [AnyEvent] = []
    /// Fan-in buffers: the values collected so far for each fan-in step, by step name.
    public var collected: [String: [JSONValue]] = [:]
    /// Armed durable timers.
    public var timers: [DurableTimer] = []
    /// The id the next step run gets.
    public var nextRunID = 0
    /// The id the next timer gets.
    public var nextTimerID = 0
    /// The sequence number the next logged event gets; the log holds 0..<nextSequence.
    public var nextSequence: Int64 = 0
    /// Why the handler is quarantined: a step of it ended the process it ran in, twice. The
    /// handler is `failed` to clients; everything else (the run that crashed included) is kept as
    /// it was, so an operator's release resumes it where it stopped.
    public var quarantine: String?
    /// For a child workflow's handler: its parent, told when it ends.
    public var parent: ParentLink?

    /// The state of a new handler of `workflowName`, before its start event.
    public init(workflowName: String) {
        self.workflowName = workflowName
    }

    /// Nothing runs: the handler only waits (for an external event or a timer).
    public var isQuiescent: Bool { status == .running && started && inFlight.isEmpty }

    /// The earliest timer deadline, if any.
    public var nextDeadline: Double? { timers.map(\.deadline).min() }

    /// The bare result of a completed handler (`StopEvent.value.result`).
    public var result: JSONValue? {
        guard status == .completed, let terminal else { return nil }
        return terminal.value["result"] ?? .null
    }
}

/// One logged event of a handler, numbered from 0 without gaps.
public struct LogRecord: Sendable, Hashable, Codable {
    /// Its position in the handler's log, from 0.
    public var sequence: Int64
    /// The event's type name.
    public var type: String
    /// The event's fields.
    public var value: JSONValue
    /// Parent type names, nearest first; nil when none.
    public var types: [String]?
    /// The event type's qualified name (`module.Name`).
    public var qualifiedName: String
    /// Whether the event is internal bookkeeping (a step state change), not a workflow event.
    public var isInternal: Bool
    /// Whether the event ended the handler (a stop event).
    public var isTerminal: Bool

    /// A log record from its fields.
    public init(
        sequence: Int64, type: String, value: JSONValue, types: [String]?, qualifiedName: String,
        isInternal: Bool, isTerminal: Bool
    ) {
        self.sequence = sequence
        self.type = type
        self.value = value
        self.types = types
        self.qualifiedName = qualifiedName
        self.isInternal = isInternal
        self.isTerminal = isTerminal
    }

    /// The logged event, without its log metadata.
    public var event: AnyEvent { AnyEvent(type: type, value: value) }
}

/// What a replica persists in one fenced transaction: the new state, the events logged since the
/// last checkpoint, and the inbox events the state has consumed.
public struct Checkpoint: Sendable {
    /// The state after the changes.
    public var state: HandlerState
    /// The events logged since the last checkpoint, in sequence order.
    public var log: [LogRecord]
    /// The ids of the inbox events the state has consumed.
    public var consumedInbox: [String]

    /// A checkpoint of `state` with its new log records and consumed inbox ids.
    public init(state: HandlerState, log: [LogRecord], consumedInbox: [String]) {
        self.state = state
        self.log = log
        self.consumedInbox = consumedInbox
    }
    /// The last sequence durable before this checkpoint: its log continues right after it (a
    /// store writes the checkpoint only over a handler that holds exactly that).
    public var expectedLastSequence: Int64 { (log.first?.sequence ?? state.nextSequence) - 1 }
}
