import Foundation
import LeaseholdEngine

/// Everything durable about handlers: records, snapshots, inbox, event log and leases.
///
/// Every method that writes for a handler on behalf of its owner takes the owner's `Lease` and
/// is fenced: when the lease is no longer current (another replica claimed the handler, or the
/// lease expired) it throws `StoreError.leaseLost` and writes nothing. Time is the store's own
/// clock (Postgres: `now()`), never a replica's.
public protocol HandlerStore: Sendable {
    /// Wake-ups for log readers and inbox consumers in this process.
    var signals: StoreSignals { get }

    /// Starts a new registration of the replica (a replica process starting), valid for `ttl`.
    /// Every lease held under this replica id before is void: released, so that those handlers
    /// move at once.
    /// - Returns: the database node that answered (nil for a store with one node).
    @discardableResult
    func register(_ replica: ReplicaID, address: String, ttl: Duration) async throws -> DatabaseNode?

    /// Renews the replica's registration for `ttl`. Leases are anchored to it: renewing it renews
    /// every lease the replica holds, at the cost of one row. A registration that has lapsed is
    /// void with all its leases (they are released, and may already have been claimed); the
    /// replica is then registered anew and holds nothing.
    /// - Parameter excluding: leases not to renew (handlers whose writes are stuck: let them expire
    ///   so another replica takes over); they expire when the registration would have.
    /// - Returns: the handlers the replica still holds, with their tokens, and the store's clock
    ///   at the renewal (a replica compares its steps with its own to detect a clock step).
    /// - Throws: `StoreError.registrationSuperseded` when a newer process registered this id.
    func renew(_ replica: ReplicaID, address: String, ttl: Duration, excluding: [HandlerID]) async throws -> Renewal

    /// Removes the replica's registration (graceful shutdown, after hand-off); a lease it still
    /// carries is released.
    func deregister(_ replica: ReplicaID) async throws

    /// Creates a handler owned by `owner` with its start event in the inbox, and returns it as
    /// stored (its record, its first lease and an empty state), so the creator needs no read.
    /// - Throws: `StoreError.handlerExists`.
    func create(_ handler: NewHandler, owner: ReplicaID) async throws -> ClaimedHandler

    /// Creates a handler whose runtime already ran, with its first checkpoint, in one commit (a
    /// `run` whose handler finishes in its first pass costs one write). The handler is created as
    /// `create` would (owned by `owner`, its start event in the inbox) but under `token`, one of
    /// `reserveTokens`; then `first` is written as a checkpoint of that lease, fenced as any
    /// checkpoint is. All or nothing: when the lease is not current (the owner's registration
    /// lapsed) nothing is written and this throws `leaseLost`.
    /// - Returns: as `checkpoint`: the record when `first` finished the handler, else nil.
    /// - Throws: `StoreError.handlerExists`, `.leaseLost`, `.tokenAhead` (the store's token
    ///   sequence is not past `token`: the database went back in time since it was reserved);
    ///   nothing is written.
    @discardableResult
    func create(_ handler: NewHandler, owner: ReplicaID, token: FencingToken, first: Checkpoint) async throws
        -> HandlerRecord?

    /// Takes `count` fencing tokens from the token sequence for `create(_:owner:token:first:)`,
    /// durably (a token answered here is never handed out again, even after a crash), in rising
    /// order. A token not used is simply skipped.
    func reserveTokens(_ count: Int) async throws -> [FencingToken]

    /// Claims claimable handlers (unowned with work waiting, hibernated with an inbox event or a due
    /// timer, or owned under an expired lease), raising each one's fencing token. The leases ride
    /// on the claimer's registration; a replica whose registration is not current claims nothing.
    /// - Parameter only: claim just this handler (a reload), if it is claimable.
    func claim(_ replica: ReplicaID, limit: Int, only: HandlerID?) async throws -> [ClaimedHandler]

    /// Writes state, new log records and consumed inbox ids in one fenced transaction.
    /// A finished state also clears the lease.
    /// - Returns: when this checkpoint finished the handler, its record as the write committed it
    ///   (what `handler(_:)` would read next), so that a `run` answers without reading it back;
    ///   nil for a running handler.
    /// - Throws: `StoreError.leaseLost` (nothing written), `.sequenceConflict`.
    @discardableResult
    func checkpoint(_ checkpoint: Checkpoint, lease: Lease) async throws -> HandlerRecord?

    /// Checkpoints, releases the lease and marks the handler hibernated, unless its inbox holds an
    /// unconsumed event (then nothing is written and the result is false).
    /// - Throws: `StoreError.leaseLost`.
    func hibernate(_ checkpoint: Checkpoint, wakeAt: Date?, lease: Lease) async throws -> Bool

    /// Checkpoints (when given one) and releases the lease without hibernating: any replica may
    /// claim it at once.
    func release(_ checkpoint: Checkpoint?, lease: Lease) async throws

    /// Appends an external event durably (committed before this returns) and wakes the owner.
    /// With a `replica`, the append also does in the same write what that replica would do next:
    /// - when `claim` is set and the handler is claimable (hibernated or unowned, or owned under
    ///   a lapsed lease) and the replica's registration is current, it claims the handler for
    ///   the replica and answers it in `claimed`, with its state and pending inbox (a reload in
    ///   one round trip; nobody else is woken);
    /// - when the replica owns the handler, it answers the pending inbox in `pending`.
    ///
    /// The inbox is answered only when it was read consistently with the row (see `claim`);
    /// otherwise the caller reads it.
    /// - Parameter accepting: the workflows the event is valid for; for a handler of another
    ///   workflow nothing is written and the receipt says `accepted: false`. Nil: any workflow.
    /// - Throws: `.handlerNotFound`, `.handlerFinished`.
    func appendInbox(
        _ handlerID: HandlerID, _ event: InboxEvent, accepting: [String]?, from replica: ReplicaID?, claim: Bool
    ) async throws -> InboxReceipt

    /// The inbox events not yet consumed, oldest first.
    func pendingInbox(_ handlerID: HandlerID) async throws -> [InboxEvent]

    /// The inbox events not yet consumed of several handlers (oldest first per handler), in one
    /// read: the reconciliation of every handler live on a replica. Handlers with none are absent.
    func pendingInbox(of handlerIDs: [HandlerID]) async throws -> [HandlerID: [InboxEvent]]

    /// Cancels a handler wherever it lives: raises the token (so the owner's next write fails),
    /// logs a `WorkflowCancelledEvent` and marks it cancelled.
    func cancel(_ handlerID: HandlerID) async throws -> CancelOutcome

    /// Deletes one run of a handler with its inbox, log and lease history. Only that run: a
    /// handler created again under the same id since (another run id) is left alone. Leaves a
    /// tombstone (its id and last token) for an hour, which `failoverCheck` reports.
    /// Returns false when there was no such run.
    func delete(_ handlerID: HandlerID, run runID: String) async throws -> Bool

    func handler(_ handlerID: HandlerID) async throws -> HandlerRecord?
    func handlers(_ filter: HandlerFilter) async throws -> [HandlerRecord]

    /// Logged events after `sequence`, in order, at most `limit`.
    func events(_ handlerID: HandlerID, after sequence: Int64, limit: Int) async throws -> [LogRecord]

    /// Deletes up to `limit` finished handlers (completed, failed, cancelled) that finished more
    /// than `age` ago by the store's clock, oldest first, with their log and inbox. Running and
    /// hibernated handlers are never touched. Safe to run on every replica at once: concurrent
    /// purges skip each other's rows. Fencing tokens stay unique for a re-created id (they come
    /// from one sequence that a purge does not reset).
    /// - Returns: the ids deleted.
    func purgeFinished(olderThan age: Duration, limit: Int) async throws -> [HandlerID]

    /// A handler's ownership changes, oldest first (deleted with the handler).
    func leaseHistory(_ handlerID: HandlerID) async throws -> [LeaseChange]

    /// The most recent ownership changes cluster-wide, newest first, at most `limit`.
    func recentLeaseChanges(limit: Int) async throws -> [LeaseChange]

    func replicas(aliveWithin ttl: Duration) async throws -> [ReplicaRecord]
    func counts() async throws -> HandlerCounts

    /// What the store holds now of these handlers and of its token sequence, in one read: after
    /// the database failed over, a replica compares it with what it had acknowledged (see
    /// `LeaseKeeper`) to tell a failover that lost nothing from one that went back in time.
    func failoverCheck(_ handlerIDs: [HandlerID]) async throws -> FailoverCheckAnswer

    /// Settles a creation whose outcome is unknown (its write was sent, no answer came): when
    /// this returns, it has either committed — its record is returned — or never will (nil).
    /// A creation still in flight in the database is waited for, not raced: the id's uniqueness
    /// decides. With a `reason`, a failed record saying it is left under the id (a server-chosen
    /// id: the run's answer names it); without, the id is left free (a client's id, which the
    /// client may use again).
    func preventCreation(_ handler: NewHandler, reason: String?) async throws -> HandlerRecord?

    /// A replica died of a fault (`CrashReport`) while steps of `handlers` ran there: each of
    /// them still running (whoever owns it now), or with `all` each running handler the replica
    /// owns, is a suspect from now on — claims say so (`ClaimedHandler.suspect`) until the
    /// handler is deleted. Returns the handlers marked.
    func recordCrash(of replica: ReplicaID, handlers: [HandlerID], all: Bool, signal: Int32) async throws
        -> [HandlerID]

    /// An operator releases a quarantined handler (failed, its state saying why): it becomes
    /// running and unowned, so the next claim runs it from where it stopped, still a suspect.
    /// Returns false when the handler is not quarantined (or does not exist).
    func releaseQuarantine(_ handlerID: HandlerID) async throws -> Bool

    /// Moves the token sequence so that every token handed out from now on is above `token`
    /// (never back): after the database went back in time, no token a replica has seen is issued
    /// again.
    func advanceTokens(past token: FencingToken) async throws

    /// The replica checked `node` (its failover check passed, or it is the first node it met):
    /// operations may run there. Until then a store that can tell nodes apart (Postgres) runs
    /// nothing on a node other than the last one trusted (see `NodeGate`), failing retryably and
    /// signalling `StoreSignals.databaseMoves` instead.
    func trust(_ node: DatabaseNode)
}

extension HandlerStore {
    /// A store with one node (the in-memory store) has nothing to gate.
    public func trust(_ node: DatabaseNode) {}

    /// Appends an external event for a handler of any workflow, claiming nothing.
    public func appendInbox(_ handlerID: HandlerID, _ event: InboxEvent) async throws -> InboxReceipt {
        try await appendInbox(handlerID, event, accepting: nil, from: nil, claim: false)
    }

    /// `renew`, answering only the leases held.
    public func heartbeat(_ replica: ReplicaID, address: String, ttl: Duration, excluding: [HandlerID] = [])
        async throws -> [HandlerID: FencingToken]
    {
        try await renew(replica, address: address, ttl: ttl, excluding: excluding).held
    }
}

/// The answer to a renewal.
public struct Renewal: Sendable, Equatable {
    /// The handlers the replica still holds, with their tokens.
    public var held: [HandlerID: FencingToken]
    /// The store's clock when it renewed (Postgres: `now()`); nil for a store that has no clock of
    /// its own apart from the replica's (the in-memory store).
    public var databaseTime: Date?
    /// The database node that answered (nil for the in-memory store).
    public var database: DatabaseNode?

    /// A renewal's answer.
    public init(held: [HandlerID: FencingToken], databaseTime: Date?, database: DatabaseNode? = nil) {
        self.held = held
        self.databaseTime = databaseTime
        self.database = database
    }
}

/// Which database answered a renewal, and where it stands in its history.
public struct DatabaseNode: Sendable, Equatable {
    /// PostgreSQL's system identifier: shared by a primary and its physical standbys, new for a
    /// database made afresh (initdb, a logical restore).
    public var systemIdentifier: String
    /// The WAL timeline: raised by every promotion of a standby and every point-in-time recovery.
    public var timeline: Int
    /// The server's address as this connection sees it (`host:port`).
    public var address: String
    /// Synchronous standbys attached to this server; nil when the database role may not see
    /// replication state (it needs `pg_monitor`).
    public var synchronousStandbys: Int?

    /// A node as the database describes itself.
    public init(systemIdentifier: String, timeline: Int, address: String, synchronousStandbys: Int?) {
        self.systemIdentifier = systemIdentifier
        self.timeline = timeline
        self.address = address
        self.synchronousStandbys = synchronousStandbys
    }
}

/// The answer to `HandlerStore.failoverCheck(_:)`.
public struct FailoverCheckAnswer: Sendable {
    /// The highest fencing token the store has handed out.
    public var highestToken: FencingToken
    /// Each handler asked about that exists: its token and the sequence of its last logged event.
    public var handlers: [HandlerID: Position]
    /// Each handler asked about that a purge deleted within the last hour (`delete`): the
    /// position (token, last sequence) it was deleted at, the latest if it was purged more than
    /// once. Gone on purpose, not lost.
    public var purged: [HandlerID: Position] = [:]
    /// The node that answered (system identifier, timeline), where the store can tell.
    public var node: (systemIdentifier: String, timeline: Int)?

    /// Where a handler stood: the token of its latest lease and its last logged sequence.
    public struct Position: Sendable, Equatable {
        /// The fencing token of its latest lease.
        public var token: FencingToken
        /// The sequence of its last logged event; -1 when none.
        public var lastSequence: Int64

        /// The position at `token` and `lastSequence`.
        public init(token: FencingToken, lastSequence: Int64) {
            self.token = token
            self.lastSequence = lastSequence
        }

        /// Whether this position is behind `other`: a lower token, or the same token with fewer
        /// events. (A higher token is a newer lease: ahead, whatever its sequence.)
        public func isBehind(_ other: Position) -> Bool {
            token < other.token || (token == other.token && lastSequence < other.lastSequence)
        }
    }

    /// A failover check of `handlers` with no purged handlers and no node.
    public init(highestToken: FencingToken, handlers: [HandlerID: Position]) {
        self.highestToken = highestToken
        self.handlers = handlers
    }
}
