import Foundation
import Synchronization

/// How often a failing step is tried and how long to wait between tries.
public struct RetryPolicy: Sendable, Hashable {
    /// Tries in all, the first included (at least 1).
    public var maxAttempts: Int
    /// Seconds to wait before the first retry.
    public var initialDelay: Double
    /// The factor each further delay grows by.
    public var multiplier: Double
    /// The longest delay between tries, in seconds.
    public var maxDelay: Double

    /// A policy of `maxAttempts` tries (at least 1) with exponential backoff between them.
    public init(maxAttempts: Int, initialDelay: Double = 0.05, multiplier: Double = 2, maxDelay: Double = 5) {
        self.maxAttempts = max(1, maxAttempts)
        self.initialDelay = initialDelay
        self.multiplier = multiplier
        self.maxDelay = maxDelay
    }

    /// One try, no retries.
    public static let none = RetryPolicy(maxAttempts: 1)

    /// The delay before attempt `attempt + 1`, after attempt `attempt` (1-based) failed.
    public func delay(after attempt: Int) -> Double {
        min(maxDelay, initialDelay * pow(multiplier, Double(max(0, attempt - 1))))
    }
}

/// Fan-in: the step runs once when `count` events of `eventType` have arrived; it receives one
/// `Collected` event whose value is `{"events": [values…]}`.
public struct FanIn: Sendable, Hashable {
    /// How many events the step waits for.
    public enum Count: Sendable, Hashable {
        case fixed(Int)
        /// The count is read from a context-state key (an integer) when each event arrives.
        case stateKey(String)
    }

    /// The type of the events collected.
    public var eventType: String
    /// How many events make a batch.
    public var count: Count

    /// Collects `count` events of `eventType`.
    public init(_ eventType: String, count: Count) {
        self.eventType = eventType
        self.count = count
    }

    /// The type name of the event a fan-in step receives.
    public static let collectedEventName = "Collected"
}

/// One step of a workflow: the event types it accepts, what it may emit, and its body.
public struct Step: Sendable {
    /// The code of a step: it gets the input event and its run's context.
    public typealias Body = @Sendable (AnyEvent, StepContext) async throws -> Void

    /// The step's name, unique in its workflow.
    public var name: String
    /// The event type names that trigger the step.
    public var accepts: [String]
    /// The event types the step may `send`.
    public var emits: [String]
    /// The event types the step may write to the stream.
    public var streams: [String]
    /// How a failing run is retried.
    public var retry: RetryPolicy
    /// Seconds a single run may take before it counts as failed.
    public var timeout: Double?
    /// Set for a fan-in step: it runs once per batch of collected events instead of once per event.
    public var fanIn: FanIn?
    /// External event types this step waits for with `StepContext.waitForEvent`.
    public var waitsFor: [String]
    /// How many runs of this step may execute at once (nil: only the handler's limit). With 1,
    /// each run sees the context state its predecessor wrote.
    public var maxConcurrency: Int?
    /// Set on a `catch_error` step (`Step.catchError`): the failed steps it handles.
    public var catches: CatchErrorScope?
    /// The step's code.
    public var body: Body

    /// A step.
    ///
    /// - Parameters:
    ///   - name: unique in its workflow.
    ///   - accepts: event type names that trigger this step (`StartEvent` for the start event).
    ///   - emits: event types the step may `send` (routed to other steps; `StopEvent` ends the run).
    ///   - streams: event types the step may write to the stream (clients see them; not routed).
    ///   - retry: how often a run that throws is tried, and the back-off between tries.
    ///   - timeout: seconds one try may take before it counts as failed (nil: no limit).
    ///   - fanIn: run once when this many events of one type have arrived, with all of them.
    ///   - waitsFor: the external event types the body waits for with `StepContext.waitForEvent`.
    ///   - maxConcurrency: how many runs of this step execute at once (nil: the handler's limit).
    ///   - body: the step's code: the input event and the run's context.
    public init(
        _ name: String,
        accepts: [String],
        emits: [String] = [],
        streams: [String] = [],
        retry: RetryPolicy = .none,
        timeout: Double? = nil,
        fanIn: FanIn? = nil,
        waitsFor: [String] = [],
        maxConcurrency: Int? = nil,
        body: @escaping Body
    ) {
        self.name = name
        self.accepts = accepts
        self.emits = emits
        self.streams = streams
        self.retry = retry
        self.timeout = timeout
        self.fanIn = fanIn
        self.waitsFor = waitsFor
        self.maxConcurrency = maxConcurrency.map { max(1, $0) }
        self.body = body
    }

    /// A `catch_error` step (Python's `@catch_error`): it runs when a step it handles has failed
    /// for good (its retries used up), with a `StepFailedEvent`, and decides what follows: it may
    /// `stop` the workflow with a result (it completes), `send` events that carry on, or throw
    /// (the workflow fails). While it runs, the workflow goes on.
    ///
    /// - Parameters:
    ///   - steps: the steps it handles; nil (a wildcard, at most one per workflow) for every step
    ///     no scoped handler claims. A handler's own failure is never caught.
    ///   - maxRecoveries: how often it may recover one chain of events (at least 1): a step that
    ///     fails again in events descended from a recovery counts against the same budget, and
    ///     past it the workflow fails.
    ///   - name: the handler step's name.
    ///   - emits: event types it may send (`StopEvent` to end the workflow).
    ///   - streams: event types it may write to the stream.
    ///   - body: receives the `StepFailedEvent` and the run's context.
    public static func catchError(
        _ name: String, for steps: [String]? = nil, maxRecoveries: Int = 1, emits: [String] = ["StopEvent"],
        streams: [String] = [], body: @escaping Body
    ) -> Step {
        var step = Step(
            name, accepts: [EventType.stepFailed.name], emits: emits, streams: streams, maxConcurrency: 1, body: body)
        step.catches = CatchErrorScope(steps: steps, maxRecoveries: max(1, maxRecoveries))
        return step
    }
}

/// What a step asked for while it ran. The reducer applies it when the run finishes.
public struct StepOutput: Sendable, Hashable, Codable {
    /// Events to route to other steps, in order.
    public var sent: [AnyEvent] = []
    /// Events written to the stream, in order.
    public var streamed: [AnyEvent] = []
    /// Context-state keys written, with their new values.
    public var stateChanges: [String: JSONValue] = [:]
    /// Durable timers to arm.
    public var timers: [TimerRequest] = []
    /// Set when the run ended waiting for an external event or a child; the rest is then ignored.
    public var wait: WaitRequest?

    /// An output that asks for nothing.
    public init() {}
}

/// A durable timer that delivers `event` after `seconds`.
public struct TimerRequest: Sendable, Hashable, Codable {
    /// The delay, in seconds.
    public var seconds: Double
    /// The event delivered when it fires.
    public var event: AnyEvent

    /// A timer delivering `event` after `seconds`.
    public init(seconds: Double, event: AnyEvent) {
        self.seconds = seconds
        self.event = event
    }
}

/// A step asked to wait for an external event; it is re-run with the same input when it arrives.
public struct WaitRequest: Sendable, Hashable, Codable {
    /// The type of the event awaited.
    public var eventType: String
    /// Written to the stream when the wait begins (nil: nothing is written).
    public var prompt: AnyEvent?
    /// For a wait on a child workflow (`StepContext.runWorkflow`): the child to start.
    public var child: ChildRequest?

    /// A wait for an event of `eventType`.
    public init(eventType: String, prompt: AnyEvent? = nil, child: ChildRequest? = nil) {
        self.eventType = eventType
        self.prompt = prompt
        self.child = child
    }
}

/// Thrown inside a step body by `waitForEvent` when the awaited event has not arrived yet.
/// The run ends without effects and is re-run once the event arrives.
public struct WaitingForEvent: Error, Sendable {
    /// What the run waits for.
    public var request: WaitRequest

    /// The error for a run that waits as `request` says.
    public init(request: WaitRequest) {
        self.request = request
    }
}

/// The step body's view of its handler: context state, output, waits and timers.
///
/// A context belongs to one step run. It is a class so the body can mutate through a shared
/// reference; the mutable part sits in a `Mutex`, so concurrent use from child tasks is safe.
public final class StepContext: Sendable {
    /// The name of the step this run executes.
    public let stepName: String
    /// 1 for the first try, 2 for the first retry, …
    public let attempt: Int
    /// The fencing token of the lease this step runs under (0 where there is no lease). A step
    /// with an external side effect passes it along, and the external system keeps only writes
    /// whose token is not lower than the highest it has seen: a replica that lost its lease while
    /// the step ran (paused, partitioned) cannot overwrite the newer owner there either.
    public let fencingToken: Int64
    /// The handler this step runs for ("" outside a runtime).
    public let handlerID: String
    private let initialState: [String: JSONValue]
    private let received: AnyEvent?
    /// The origin of this run's chain and the ends of its children so far (`runWorkflow`).
    private let origin: Int
    private let children: [String: AnyEvent]
    private let childCalls = Mutex(0)
    private let output = Mutex(StepOutput())

    /// Where this run is in its retries (Python's `ctx.retry_info()`).
    public let retryInfo: RetryInfo

    /// A context for a run of `stepName`, outside a runtime (tests, direct calls).
    public init(
        stepName: String, attempt: Int, state: [String: JSONValue], received: AnyEvent?, fencingToken: Int64 = 0,
        handlerID: String = "", retryInfo: RetryInfo? = nil
    ) {
        self.handlerID = handlerID
        self.stepName = stepName
        self.attempt = attempt
        self.retryInfo = retryInfo ?? RetryInfo(retryNumber: max(0, attempt - 1))
        self.origin = 0
        self.children = [:]
        self.fencingToken = fencingToken
        self.initialState = state
        self.received = received
    }

    /// The context of one run of a step, as a runtime makes it.
    public init(run: StepRun, state: [String: JSONValue], fencingToken: Int64 = 0, handlerID: String = "") {
        self.handlerID = handlerID
        self.stepName = run.step
        self.attempt = run.attempt
        self.fencingToken = fencingToken
        self.initialState = state
        self.received = run.received
        self.retryInfo = RetryInfo(run)
        self.origin = run.origin ?? run.id
        self.children = run.children ?? [:]
    }

    /// Reads a context-state key, seeing this run's own writes.
    public func get(_ key: String) -> JSONValue? {
        output.withLock { $0.stateChanges[key] } ?? initialState[key]
    }

    /// Writes a context-state key; the handler sees it when the run finishes.
    public func set(_ key: String, _ value: JSONValue) {
        output.withLock { $0.stateChanges[key] = value }
    }

    /// Routes an event to the steps that accept it (`StopEvent` ends the handler).
    public func send(_ event: AnyEvent) {
        output.withLock { $0.sent.append(event) }
    }

    /// Routes a typed event to the steps that accept it.
    public func send<E: Event>(_ event: E) throws {
        send(try AnyEvent(event))
    }

    /// Ends the handler with `result`.
    public func stop(_ result: JSONValue) {
        send(AnyEvent(type: EventType.stopEventName, value: ["result": result]))
    }

    /// Writes an event to the handler's stream, which clients read.
    public func write(_ event: AnyEvent) {
        output.withLock { $0.streamed.append(event) }
    }

    /// Writes a typed event to the handler's stream.
    public func write<E: Event>(_ event: E) throws {
        write(try AnyEvent(event))
    }

    /// Arms a durable timer: `event` is delivered after `seconds`, even across hibernation and failover.
    /// NaN, negative, infinite and absurd delays are clamped (`Bounds.delay`).
    public func schedule(_ event: AnyEvent, after seconds: Double) {
        output.withLock { $0.timers.append(TimerRequest(seconds: Bounds.delay(seconds), event: event)) }
    }

    /// Returns the external event this step waits for, or ends the run until it arrives.
    ///
    /// The first run writes `prompt` to the stream and ends without effects; when an event of
    /// `eventType` arrives the step is run again with the same input, and this call returns it.
    /// - Throws: `WaitingForEvent` (let it propagate).
    public func waitForEvent(_ eventType: String, prompt: AnyEvent? = nil) throws -> AnyEvent {
        if let received, received.type == eventType { return received }
        throw WaitingForEvent(request: WaitRequest(eventType: eventType, prompt: prompt))
    }

    /// Runs workflow `name` as a child handler and returns its result (the bare result of its
    /// `StopEvent`), or ends this run until the child has ended (let the error propagate, as with
    /// `waitForEvent`); the step then runs again with the same input and this call returns.
    ///
    /// The child is a handler of its own, on any replica, with the id `<this handler>~<key>`
    /// (`key` defaults to this run's chain and the call's position in it), so a step run again
    /// (after a failover, or for the next of several children) asks for the same child and it
    /// starts once. Cancelling this handler cancels its children. A retry of the step (after it
    /// threw) starts new children.
    /// - Throws: `ChildWorkflowFailed` when the child failed or was cancelled; `WaitingForEvent`
    ///   while it runs; `EngineError.invalidEvent` when the child's id would be longer than 128.
    public func runWorkflow(_ name: String, start: JSONValue = [:], key: String? = nil) throws -> JSONValue {
        let call = childCalls.withLock { calls in
            calls += 1
            return calls
        }
        let id = "\(handlerID)~\(key ?? "\(origin).\(call)")"
        guard id.count <= 128 else {
            throw EngineError.invalidEvent(
                type: "child workflow", reason: "its id '\(id)' is longer than 128 characters (nested too deep)")
        }
        if let end = children[id] {
            let status = end.value["status"]?.stringValue ?? "failed"
            guard status == HandlerStatus.completed.rawValue else {
                throw ChildWorkflowFailed(childID: id, status: status, error: end.value["error"]?.stringValue)
            }
            return end.value["result"] ?? .null
        }
        throw WaitingForEvent(
            request: WaitRequest(
                eventType: EventType.childFinished.name, child: ChildRequest(id: id, workflow: name, start: start)))
    }

    /// What the run produced so far.
    public var collectedOutput: StepOutput { output.withLock { $0 } }
}
