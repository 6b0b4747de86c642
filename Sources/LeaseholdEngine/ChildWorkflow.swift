/// Nested workflows: a step runs another workflow as a handler of its own (a child) and gets its
/// result (`StepContext.runWorkflow`).
///
/// The child is an ordinary handler — durable, leased, run on any replica — whose id derives from
/// the parent's id and the step run that asked for it, so a step run again after a failover asks
/// for the same child, and its creation (idempotent by id) starts it exactly once. The parent's
/// step waits as for an external event (the handler may hibernate meanwhile); the child's final
/// checkpoint puts `ChildWorkflowFinished` in the parent's inbox in the same commit, and the step
/// runs again with the result.

/// A step's request for a child handler.
public struct ChildRequest: Sendable, Hashable, Codable {
    /// The child's handler id (`<parent>~<origin>.<n>`, or `<parent>~<key>`).
    public var id: String
    /// The child's workflow.
    public var workflow: String
    /// Its start event's fields.
    public var start: JSONValue

    /// - Parameters:
    ///   - id: the child's handler id.
    ///   - workflow: its workflow's name.
    ///   - start: its start event's fields.
    public init(id: String, workflow: String, start: JSONValue) {
        self.id = id
        self.workflow = workflow
        self.start = start
    }
}

/// A child's link to its parent, kept in the child's state: where its end is reported.
public struct ParentLink: Sendable, Hashable, Codable {
    /// The parent's handler id.
    public var handlerID: String
    /// This child's id, as the parent's waiter knows it.
    public var childID: String

    /// - Parameters:
    ///   - handlerID: the parent's handler id.
    ///   - childID: the child's handler id.
    public init(handlerID: String, childID: String) {
        self.handlerID = handlerID
        self.childID = childID
    }

    /// The inbox id of this child's end in the parent's inbox (one per child: a repeat is a no-op).
    public var noticeID: String { "child:\(childID)" }

    /// The `ChildWorkflowFinished` event for a child that ended with `status`.
    public func notice(status: HandlerStatus, result: JSONValue? = nil, error: String? = nil) -> AnyEvent {
        var value: [String: JSONValue] = ["child_id": .string(childID), "status": .string(status.rawValue)]
        if let result { value["result"] = result }
        if let error { value["error"] = .string(error) }
        return AnyEvent(type: EventType.childFinished.name, value: .object(value))
    }

    /// The link as its start event field carries it (`startField`).
    public var json: JSONValue { ["handler_id": .string(handlerID), "child_id": .string(childID)] }

    /// The link a child's start event carries, if any.
    public init?(startEvent value: JSONValue) {
        guard let link = value[Self.startField], let parent = link["handler_id"]?.stringValue,
            let child = link["child_id"]?.stringValue
        else { return nil }
        self.init(handlerID: parent, childID: child)
    }

    /// The start event field that carries the link into a child (set by the coordinator when it
    /// creates a child; a client's start event cannot carry it).
    public static let startField = "_leasehold_parent"
}

/// A child workflow ended otherwise than completed: thrown by `StepContext.runWorkflow` in the
/// parent's step (which its retry policy and `catch_error` then handle).
public struct ChildWorkflowFailed: Error, Sendable, Hashable, CustomStringConvertible {
    /// The child's handler id.
    public var childID: String
    /// `failed` or `cancelled`.
    public var status: String
    /// The child's error, when it failed.
    public var error: String?

    /// What a client sees.
    public var description: String {
        "child workflow '\(childID)' \(status)\(error.map { ": \($0)" } ?? "")"
    }
}

extension EventType {
    /// Put in a parent's inbox when one of its children ends (in the child's final commit):
    /// `child_id`, `status` (`completed`, `failed`, `cancelled`), `result` (the bare result of a
    /// completed child) and `error`.
    public static let childFinished = EventType(
        "ChildWorkflowFinished",
        fields: [
            FieldSpec("child_id", .string), FieldSpec("status", .string), FieldSpec("result", .any, required: false),
            FieldSpec("error", .string, required: false),
        ], module: "leasehold.events")
}

extension HandlerState {
    /// The `ChildWorkflowFinished` this finished child reports to its parent (nil for a running
    /// handler or one without a parent). A store writes it into the parent's inbox in the same
    /// transaction as the checkpoint that finishes the child.
    public var parentNotice: (parent: String, inboxID: String, event: AnyEvent)? {
        guard status.isFinished, let parent else { return nil }
        return (parent.handlerID, parent.noticeID, parent.notice(status: status, result: result, error: error))
    }
}
