import Foundation
import LeaseholdEngine

/// A handler as the store keeps it (without its snapshot).
public struct HandlerRecord: Sendable, Hashable, Codable {
    public var id: HandlerID
    public var workflowName: String
    public var runID: String
    public var status: HandlerStatus
    public var error: String?
    /// The terminal event once finished.
    public var result: LogRecord?
    public var startedAt: Date
    public var updatedAt: Date
    public var completedAt: Date?
    public var owner: ReplicaID?
    public var leaseExpiresAt: Date?
    public var fencingToken: FencingToken
    public var hibernated: Bool
    /// The highest logged sequence; -1 when nothing is logged yet.
    public var lastSequence: Int64
    /// When a hibernated handler's next durable timer is due.
    public var wakeAt: Date?

    public init(
        id: HandlerID, workflowName: String, runID: String, status: HandlerStatus, error: String?,
        result: LogRecord?, startedAt: Date, updatedAt: Date, completedAt: Date?, owner: ReplicaID?,
        leaseExpiresAt: Date?, fencingToken: FencingToken, hibernated: Bool, lastSequence: Int64, wakeAt: Date?
    ) {
        self.id = id
        self.workflowName = workflowName
        self.runID = runID
        self.status = status
        self.error = error
        self.result = result
        self.startedAt = startedAt
        self.updatedAt = updatedAt
        self.completedAt = completedAt
        self.owner = owner
        self.leaseExpiresAt = leaseExpiresAt
        self.fencingToken = fencingToken
        self.hibernated = hibernated
        self.lastSequence = lastSequence
        self.wakeAt = wakeAt
    }
}

/// A handler to create: it starts owned by its creator, with its start event in its inbox.
public struct NewHandler: Sendable, Hashable {
    public var id: HandlerID
    public var workflowName: String
    public var runID: String
    public var startEvent: InboxEvent

    public init(id: HandlerID, workflowName: String, runID: String, startEvent: InboxEvent) {
        self.id = id
        self.workflowName = workflowName
        self.runID = runID
        self.startEvent = startEvent
    }
}

/// An external event, durable in a handler's inbox until a checkpoint consumes it.
public struct InboxEvent: Sendable, Hashable, Codable {
    /// Unique per handler; appending the same id twice is a no-op (retries are safe).
    public var id: String
    public var event: AnyEvent

    public init(id: String, event: AnyEvent) {
        self.id = id
        self.event = event
    }

    /// The inbox entry that carries a special instruction rather than a workflow event.
    public static let startType = "StartEvent"
}

/// A handler a replica has just claimed, with the state to resume it from.
public struct ClaimedHandler: Sendable {
    public var record: HandlerRecord
    public var lease: Lease
    public var state: HandlerState
    /// How the lease was acquired (`created`, `claimed`, `reloaded` or `failedOver`), as the lease
    /// history records it.
    public var acquired: LeaseChange.Kind
    /// The handler's unconsumed inbox, in order, when the store read it in the same step that
    /// granted the lease (a creation's start event; a claim's pending events): the runtime starts
    /// with it and needs no further read. Nil: read it after launch.
    public var pendingInbox: [InboxEvent]?
    /// A replica died of a fault while a step of this handler ran there (`recordCrash`): its
    /// steps run isolated until it has got past them.
    public var suspect: Bool

    public init(
        record: HandlerRecord, lease: Lease, state: HandlerState, acquired: LeaseChange.Kind = .claimed,
        pendingInbox: [InboxEvent]? = nil, suspect: Bool = false
    ) {
        self.suspect = suspect
        self.record = record
        self.lease = lease
        self.state = state
        self.acquired = acquired
        self.pendingInbox = pendingInbox
    }
}

/// What happened to an appended inbox event.
public struct InboxReceipt: Sendable {
    /// The owner when the event was appended; nil when nobody held the handler (hibernated or
    /// orphaned).
    public var owner: ReplicaID?
    /// Whether the handler was hibernated when the event was appended.
    public var hibernated: Bool
    /// False when an event with the same id was already there, or when nothing was written.
    public var inserted: Bool
    /// False when the handler's workflow is not one the event was accepted for: nothing written.
    public var accepted: Bool
    /// The handler's workflow.
    public var workflowName: String?
    /// The handler, claimed for the appending replica by the append itself (a reload in one
    /// write), with its state and its pending inbox, this event included.
    public var claimed: ClaimedHandler?
    /// The handler's pending inbox, this event included, with its lease's token, when the
    /// appending replica owns it and the store read the inbox with the append.
    public var pending: PendingInbox?

    public init(
        owner: ReplicaID?, hibernated: Bool, inserted: Bool, accepted: Bool = true, workflowName: String? = nil,
        claimed: ClaimedHandler? = nil, pending: PendingInbox? = nil
    ) {
        self.owner = owner
        self.hibernated = hibernated
        self.inserted = inserted
        self.accepted = accepted
        self.workflowName = workflowName
        self.claimed = claimed
        self.pending = pending
    }
}

/// A handler's unconsumed inbox as read under one of its leases.
public struct PendingInbox: Sendable, Equatable {
    /// The token of the lease the handler was held under when the inbox was read.
    public var token: FencingToken
    public var events: [InboxEvent]

    public init(token: FencingToken, events: [InboxEvent]) {
        self.token = token
        self.events = events
    }
}

/// A replica as registered in the store.
public struct ReplicaRecord: Sendable, Hashable, Codable {
    public var id: ReplicaID
    public var address: String
    public var startedAt: Date
    public var heartbeatAt: Date
    public var handlersOwned: Int
    public var alive: Bool

    public init(id: ReplicaID, address: String, startedAt: Date, heartbeatAt: Date, handlersOwned: Int, alive: Bool) {
        self.id = id
        self.address = address
        self.startedAt = startedAt
        self.heartbeatAt = heartbeatAt
        self.handlersOwned = handlersOwned
        self.alive = alive
    }
}

/// Filters for listing handlers; an empty list means no filter.
public struct HandlerFilter: Sendable, Hashable {
    public var statuses: [HandlerStatus]
    public var workflows: [String]
    /// Only ids that start with this (a handler's children: `<id>~`).
    public var idPrefix: String?

    public init(statuses: [HandlerStatus] = [], workflows: [String] = [], idPrefix: String? = nil) {
        self.statuses = statuses
        self.workflows = workflows
        self.idPrefix = idPrefix
    }

    public func matches(_ record: HandlerRecord) -> Bool {
        (statuses.isEmpty || statuses.contains(record.status))
            && (workflows.isEmpty || workflows.contains(record.workflowName))
            && (idPrefix.map { record.id.rawValue.hasPrefix($0) } ?? true)
    }
}

/// Handler counts for the cluster view; `running` excludes hibernated handlers.
public struct HandlerCounts: Sendable, Hashable, Codable {
    public var running = 0
    public var hibernated = 0
    public var completed = 0
    public var failed = 0
    public var cancelled = 0
    /// Running handlers whose owner's lease has expired by the store's clock (failover pending).
    public var expiredLeases = 0

    public init() {}
}

/// The result of a cancel request.
public enum CancelOutcome: Sendable, Hashable {
    case cancelled(HandlerRecord)
    case alreadyFinished(HandlerRecord)
}

extension LogRecord {
    /// The terminal record a cancel writes at `sequence`.
    public static func cancelled(sequence: Int64) -> LogRecord {
        LogRecord(
            sequence: sequence, type: EventType.cancelled.name, value: [:], types: EventType.cancelled.parents,
            qualifiedName: EventType.cancelled.qualifiedName, isInternal: false, isTerminal: true)
    }
}
