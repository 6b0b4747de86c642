import Foundation
import LeaseholdEngine

/// A handler as the store keeps it (without its snapshot).
public struct HandlerRecord: Sendable, Hashable, Codable {
    /// The handler's id.
    public var id: HandlerID
    /// The workflow the handler runs.
    public var workflowName: String
    /// Names this creation of the handler (a fresh UUID each time): tells it from a handler created
    /// under the same id before or since.
    public var runID: String
    /// Where the handler is in its life.
    public var status: HandlerStatus
    /// Why the handler failed (quarantined included); nil unless it failed.
    public var error: String?
    /// The terminal event once finished.
    public var result: LogRecord?
    /// When the handler was created.
    public var startedAt: Date
    /// When the record last changed.
    public var updatedAt: Date
    /// When the handler finished; nil while it is running.
    public var completedAt: Date?
    /// The replica holding its lease; nil when nobody does (hibernated, released or finished).
    public var owner: ReplicaID?
    /// When the owner's lease expires unless renewed; nil when there is no owner.
    public var leaseExpiresAt: Date?
    /// The token of its latest lease (raised by every claim and by a cancel).
    public var fencingToken: FencingToken
    /// Whether the handler is hibernated: running, but held by no replica until an event or a
    /// timer wakes it.
    public var hibernated: Bool
    /// The highest logged sequence; -1 when nothing is logged yet.
    public var lastSequence: Int64
    /// When a hibernated handler's next durable timer is due.
    public var wakeAt: Date?

    /// Creates a record from its stored fields.
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
    /// The handler's id.
    public var id: HandlerID
    /// The workflow it runs.
    public var workflowName: String
    /// Names this creation of the handler (see `HandlerRecord.runID`).
    public var runID: String
    /// The start event, put in its inbox with the creation.
    public var startEvent: InboxEvent

    /// Describes a handler to create.
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
    /// The event itself.
    public var event: AnyEvent

    /// An inbox event with its idempotency id.
    public init(id: String, event: AnyEvent) {
        self.id = id
        self.event = event
    }

    /// The inbox entry that carries a special instruction rather than a workflow event.
    public static let startType = "StartEvent"
}

/// A handler a replica has just claimed, with the state to resume it from.
public struct ClaimedHandler: Sendable {
    /// The handler's record as the claim left it.
    public var record: HandlerRecord
    /// The lease the replica now holds on it.
    public var lease: Lease
    /// The state to resume it from (its last checkpoint).
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

    /// A claimed handler with its lease and state.
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

    /// What an append did.
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
    /// The unconsumed events, oldest first.
    public var events: [InboxEvent]

    /// An inbox read under the lease with `token`.
    public init(token: FencingToken, events: [InboxEvent]) {
        self.token = token
        self.events = events
    }
}

/// A replica as registered in the store.
public struct ReplicaRecord: Sendable, Hashable, Codable {
    /// The replica's id.
    public var id: ReplicaID
    /// How other replicas and operators reach it.
    public var address: String
    /// When its current registration began (the process started).
    public var startedAt: Date
    /// When it last renewed its registration.
    public var heartbeatAt: Date
    /// How many handlers it holds leases on.
    public var handlersOwned: Int
    /// Whether it renewed within the window the listing asked about.
    public var alive: Bool

    /// A replica record from its stored fields.
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
    /// Only handlers with one of these statuses.
    public var statuses: [HandlerStatus]
    /// Only handlers of one of these workflows.
    public var workflows: [String]
    /// Only ids that start with this (a handler's children: `<id>~`).
    public var idPrefix: String?

    /// A filter; the defaults match every handler.
    public init(statuses: [HandlerStatus] = [], workflows: [String] = [], idPrefix: String? = nil) {
        self.statuses = statuses
        self.workflows = workflows
        self.idPrefix = idPrefix
    }

    /// Whether `record` passes every filter.
    public func matches(_ record: HandlerRecord) -> Bool {
        (statuses.isEmpty || statuses.contains(record.status))
            && (workflows.isEmpty || workflows.contains(record.workflowName))
            && (idPrefix.map { record.id.rawValue.hasPrefix($0) } ?? true)
    }
}

/// Handler counts for the cluster view; `running` excludes hibernated handlers.
public struct HandlerCounts: Sendable, Hashable, Codable {
    /// Running handlers that are not hibernated.
    public var running = 0
    /// Running handlers that are hibernated.
    public var hibernated = 0
    /// Handlers that completed.
    public var completed = 0
    /// Handlers that failed (quarantined included).
    public var failed = 0
    /// Handlers that were cancelled.
    public var cancelled = 0
    /// Running handlers whose owner's lease has expired by the store's clock (failover pending).
    public var expiredLeases = 0

    /// All counts zero.
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
