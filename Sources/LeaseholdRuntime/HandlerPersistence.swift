import LeaseholdEngine

/// Where a runtime writes its checkpoints. The coordinator implements it with the store and the
/// handler's lease; a write that is no longer allowed throws, and the runtime stops at once.
public protocol HandlerPersistence: Sendable {
    func checkpoint(_ checkpoint: Checkpoint) async throws

    /// Creates the child handler a step asked for (`StepContext.runWorkflow`), with this handler
    /// as its parent; a child that exists already is left as it is (the same request again after
    /// a failover). Throws when it could not be created (the runtime tries again).
    func startChild(_ request: ChildRequest) async throws
}

extension HandlerPersistence {
    /// Where no coordinator creates children (a bare runtime in a test): nested workflows fail.
    public func startChild(_ request: ChildRequest) async throws {
        throw StepError.engine("nested workflows need a coordinator")
    }
}

/// An external event handed to a runtime, with the inbox id its checkpoint will consume.
public struct Delivery: Sendable, Hashable {
    /// The inbox event's id, consumed by the checkpoint that applies it.
    public var inboxID: String
    /// The event.
    public var event: AnyEvent

    /// The delivery of `event` from inbox entry `inboxID`.
    public init(inboxID: String, event: AnyEvent) {
        self.inboxID = inboxID
        self.event = event
    }
}

/// How a runtime ended.
public enum RuntimeOutcome: Sendable {
    /// The handler finished; its final state is checkpointed.
    case finished(HandlerState)
    /// The runtime was stopped; with `.drain` its last state is checkpointed, with `.abandon` not.
    case stopped(HandlerState)
}

/// How to stop a runtime.
public enum StopMode: Sendable {
    /// Cancel running steps (they stay in-flight in the state and run again on resume) and
    /// checkpoint what was logged so far.
    case drain
    /// Stop at once and write nothing: the lease is gone.
    case abandon
}

struct StepTimedOut: Error, CustomStringConvertible {
    var seconds: Double
    var description: String { "step timed out after \(seconds)s" }
}
