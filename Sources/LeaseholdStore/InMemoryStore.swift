import Foundation
import LeaseholdEngine
import LeaseholdKit

/// The store of a single process: everything in memory, leases trivially exclusive.
///
/// It is the embedded default (`leasehold serve` without `--database-url`), not a test double:
/// it keeps the full store contract, fencing included, and passes the same conformance suite.
public actor InMemoryStore: HandlerStore {
    struct Entry: Sendable {
        var record: HandlerRecord
        var state: HandlerState
        var inbox: [(event: InboxEvent, consumed: Bool)]
        var log: [LogRecord]
        var history: [LeaseChange] = []
        /// A replica died of a fault during one of its steps (`recordCrash`).
        var suspect = false
    }

    struct Replica: Sendable {
        var address: String
        var startedAt: Date
        var heartbeatAt: Date
        /// Leases are anchored here: a handler owned by this replica is held while this is in the
        /// future and the handler's own cap (`record.leaseExpiresAt`, distant future unless the
        /// replica stopped renewing that lease) has not passed.
        var leaseExpiresAt: Date
    }

    /// See `HandlerStore.signals`.
    public nonisolated let signals: StoreSignals
    var entries: [HandlerID: Entry] = [:]
    var replicaTable: [ReplicaID: Replica] = [:]
    /// The last fencing token handed out, for any handler: tokens never repeat, across deletes.
    var lastToken: Int64 = 0
    /// The latest ownership changes cluster-wide (bounded; each handler keeps its own in full).
    var recent: [LeaseChange] = []
    static let recentLimit = 10_000
    /// Handlers deleted by a purge (within about `tombstoneLife`): the position each was deleted
    /// at, and when. Expired ones are dropped whenever the table has doubled since the last time.
    var tombstones: [HandlerID: (position: FailoverCheckAnswer.Position, at: Date)] = [:]
    var tombstonesAfterLastExpiry = 0
    static let tombstoneLife: TimeInterval = 3600
    /// The replica's clock (one process): wall time for the records, monotonic for the signals.
    nonisolated let clock: ReplicaClock

    /// Test-only (the simulator's mutation table): with false a write needs only its handler to
    /// exist — token, owner and lease expiry are not checked.
    nonisolated let fencing: Bool
    /// Test-only (the same): with false a creation under a reserved token the sequence is not
    /// past is accepted.
    nonisolated let tokenReserveCheck: Bool

    /// Everything the store holds, as a standby would have it (the simulator's failover to a
    /// standby that lagged: `image()` then, later, `restore(_:)`).
    package struct Image: Sendable {
        fileprivate var entries: [HandlerID: Entry]
        fileprivate var replicaTable: [ReplicaID: Replica]
        fileprivate var lastToken: Int64
        fileprivate var recent: [LeaseChange]
        fileprivate var tombstones: [HandlerID: (position: FailoverCheckAnswer.Position, at: Date)]
    }

    package func image() -> Image {
        Image(
            entries: entries, replicaTable: replicaTable, lastToken: lastToken, recent: recent, tombstones: tombstones)
    }

    /// Goes back to `image`: what was written since is lost.
    package func restore(_ image: Image) {
        entries = image.entries
        replicaTable = image.replicaTable
        lastToken = image.lastToken
        recent = image.recent
        tombstones = image.tombstones
        signals.allLogsChanged()
    }

    /// An empty store on `clock`.
    public init(clock: ReplicaClock = .system) {
        self.init(clock: clock, fencing: true, tokenReserveCheck: true)
    }

    /// An empty store on `clock`, fencing writes or not (see `fencing`).
    package init(clock: ReplicaClock, fencing: Bool, tokenReserveCheck: Bool = true) {
        self.clock = clock
        self.signals = StoreSignals(clock: clock)
        self.fencing = fencing
        self.tokenReserveCheck = tokenReserveCheck
    }

    /// Wall-clock now, the time the records carry.
    nonisolated func now() -> Date { clock.wall }

    func nextToken() -> FencingToken {
        lastToken += 1
        return FencingToken(lastToken)
    }

    /// See `HandlerStore.failoverCheck(_:)`.
    public func failoverCheck(_ handlerIDs: [HandlerID]) async throws -> FailoverCheckAnswer {
        var found: [HandlerID: FailoverCheckAnswer.Position] = [:]
        for id in handlerIDs {
            guard let record = entries[id]?.record else { continue }
            found[id] = FailoverCheckAnswer.Position(token: record.fencingToken, lastSequence: record.lastSequence)
        }
        var answer = FailoverCheckAnswer(highestToken: FencingToken(lastToken), handlers: found)
        let cutoff = now().addingTimeInterval(-Self.tombstoneLife)
        for id in handlerIDs {
            if let tombstone = tombstones[id], tombstone.at >= cutoff { answer.purged[id] = tombstone.position }
        }
        return answer
    }

    /// See `HandlerStore.advanceTokens(past:)`.
    public func advanceTokens(past token: FencingToken) async throws {
        lastToken = max(lastToken, token.rawValue)
    }

    func note(_ kind: LeaseChange.Kind, _ entry: inout Entry, replica: ReplicaID?) {
        let change = LeaseChange(
            handlerID: entry.record.id, at: now(), kind: kind, replica: replica, token: entry.record.fencingToken)
        entry.history.append(change)
        recent.append(change)
        if recent.count > Self.recentLimit { recent.removeFirst(recent.count - Self.recentLimit) }
    }

    func expiry(_ ttl: Duration) -> Date {
        now().addingTimeInterval(ttl.seconds)
    }

    func isCurrent(_ replica: ReplicaID, at time: Date) -> Bool {
        (replicaTable[replica]?.leaseExpiresAt ?? .distantPast) > time
    }

    /// Releases every lease carried by the replica's registration.
    func void(_ replica: ReplicaID, at time: Date) {
        for (id, entry) in entries where entry.record.owner == replica {
            var entry = entry
            entry.record.owner = nil
            entry.record.leaseExpiresAt = nil
            entry.record.updatedAt = time
            note(.voided, &entry, replica: replica)
            entries[id] = entry
        }
    }

    func upsert(_ replica: ReplicaID, address: String, ttl: Duration, at time: Date, restart: Bool) {
        var row =
            replicaTable[replica]
            ?? Replica(address: address, startedAt: time, heartbeatAt: time, leaseExpiresAt: .distantPast)
        row.address = address
        row.heartbeatAt = time
        row.leaseExpiresAt = expiry(ttl)
        if restart { row.startedAt = time }
        replicaTable[replica] = row
    }

    /// See `HandlerStore.register(_:address:ttl:)`.
    @discardableResult
    public func register(_ replica: ReplicaID, address: String, ttl: Duration) async throws -> DatabaseNode? {
        _ = renew(replica, address: address, ttl: ttl, excluding: [], fresh: true)
        return nil
    }

    /// The in-memory store shares the replica's clock (one process): it reports no time of its own.
    public func renew(_ replica: ReplicaID, address: String, ttl: Duration, excluding: [HandlerID]) async throws
        -> Renewal
    {
        Renewal(held: renew(replica, address: address, ttl: ttl, excluding: excluding, fresh: false), databaseTime: nil)
    }

    /// The registration renewed (or, `fresh` or lapsed, started anew with its old leases void).
    func renew(_ replica: ReplicaID, address: String, ttl: Duration, excluding: [HandlerID], fresh: Bool)
        -> [HandlerID: FencingToken]
    {
        let time = now()
        let current = !fresh && isCurrent(replica, at: time)
        let renewedFrom = replicaTable[replica]?.leaseExpiresAt
        upsert(replica, address: address, ttl: ttl, at: time, restart: fresh)
        guard current else {
            void(replica, at: time)
            return [:]
        }
        var held: [HandlerID: FencingToken] = [:]
        for (id, entry) in entries where entry.record.owner == replica && entry.record.status == .running {
            guard let cap = entry.record.leaseExpiresAt, cap > time else { continue }
            held[id] = entry.record.fencingToken
        }
        for id in excluding
        where entries[id]?.record.owner == replica && entries[id]?.record.leaseExpiresAt == .distantFuture {
            entries[id]?.record.leaseExpiresAt = renewedFrom
        }
        return held
    }

    /// See `HandlerStore.deregister(_:)`.
    public func deregister(_ replica: ReplicaID) async throws {
        void(replica, at: now())
        replicaTable[replica] = nil
    }

    /// The record as readers see it: the lease's effective expiry (the owner's registration or
    /// the lease's own cap, whichever comes first).
    func published(_ record: HandlerRecord) -> HandlerRecord {
        guard let owner = record.owner else { return record }
        var record = record
        let registration = replicaTable[owner]?.leaseExpiresAt ?? Date(timeIntervalSince1970: 0)
        record.leaseExpiresAt = min(record.leaseExpiresAt ?? .distantFuture, registration)
        return record
    }

    /// See `HandlerStore.create(_:owner:)`.
    public func create(_ handler: NewHandler, owner: ReplicaID) async throws -> ClaimedHandler {
        try insert(handler, owner: owner, token: nil)
    }

    /// See `HandlerStore.create(_:owner:token:first:)`.
    @discardableResult
    public func create(_ handler: NewHandler, owner: ReplicaID, token: FencingToken, first: Checkpoint) async throws
        -> HandlerRecord?
    {
        guard token.rawValue <= lastToken || !tokenReserveCheck else { throw StoreError.tokenAhead(token) }
        guard entries[handler.id] == nil else { throw StoreError.handlerExists(handler.id) }
        // All or nothing: the creation stands only with its first checkpoint, whose fence (the
        // owner's registration) is checked first.
        guard isCurrent(owner, at: now()) else { throw StoreError.leaseLost(handler.id) }
        let claimed = try insert(handler, owner: owner, token: token)
        return try await checkpoint(first, lease: claimed.lease)
    }

    /// See `HandlerStore.reserveTokens(_:)`.
    public func reserveTokens(_ count: Int) async throws -> [FencingToken] {
        (0..<max(0, count)).map { _ in nextToken() }
    }

    private func insert(_ handler: NewHandler, owner: ReplicaID, token: FencingToken?) throws -> ClaimedHandler {
        guard entries[handler.id] == nil else { throw StoreError.handlerExists(handler.id) }
        let time = now()
        let record = HandlerRecord(
            id: handler.id, workflowName: handler.workflowName, runID: handler.runID, status: .running, error: nil,
            result: nil, startedAt: time, updatedAt: time, completedAt: nil, owner: owner,
            leaseExpiresAt: .distantFuture, fencingToken: token ?? nextToken(), hibernated: false, lastSequence: -1,
            wakeAt: nil)
        var entry = Entry(
            record: record, state: HandlerState(workflowName: handler.workflowName),
            inbox: [(handler.startEvent, false)], log: [])
        note(.created, &entry, replica: owner)
        entries[handler.id] = entry
        return ClaimedHandler(
            record: published(record),
            lease: Lease(handlerID: handler.id, replicaID: owner, token: record.fencingToken),
            state: HandlerState(workflowName: handler.workflowName), acquired: .created,
            pendingInbox: [handler.startEvent])
    }

    func isClaimable(_ record: HandlerRecord, pendingInbox: Bool, at time: Date) -> Bool {
        guard record.status == .running else { return false }
        if let owner = record.owner {
            return (record.leaseExpiresAt ?? .distantPast) <= time || !isCurrent(owner, at: time)
        }
        if !record.hibernated || pendingInbox { return true }
        if let wakeAt = record.wakeAt, wakeAt <= time { return true }
        return false
    }

    /// See `HandlerStore.claim(_:limit:only:)`.
    public func claim(_ replica: ReplicaID, limit: Int, only: HandlerID?) async throws -> [ClaimedHandler] {
        let time = now()
        guard isCurrent(replica, at: time) else { return [] }
        let candidates: [HandlerID] = only.map { [$0] } ?? Array(entries.keys)
        var claimed: [ClaimedHandler] = []
        for id in candidates where claimed.count < limit {
            guard var entry = entries[id],
                isClaimable(entry.record, pendingInbox: entry.inbox.contains { !$0.consumed }, at: time)
            else { continue }
            let kind: LeaseChange.Kind =
                entry.record.owner != nil ? .failedOver : entry.record.hibernated ? .reloaded : .claimed
            entry.record.owner = replica
            entry.record.leaseExpiresAt = .distantFuture
            entry.record.fencingToken = nextToken()
            entry.record.hibernated = false
            entry.record.wakeAt = nil
            note(kind, &entry, replica: replica)
            entries[id] = entry
            claimed.append(
                ClaimedHandler(
                    record: published(entry.record),
                    lease: Lease(handlerID: id, replicaID: replica, token: entry.record.fencingToken),
                    state: entry.state, acquired: kind,
                    pendingInbox: entry.inbox.filter { !$0.consumed }.map(\.event), suspect: entry.suspect))
        }
        return claimed
    }

    func fencedEntry(_ lease: Lease) throws -> Entry {
        if !fencing, let entry = entries[lease.handlerID] { return entry }
        guard let entry = entries[lease.handlerID], entry.record.fencingToken == lease.token,
            entry.record.owner == lease.replicaID, (entry.record.leaseExpiresAt ?? .distantPast) > now(),
            isCurrent(lease.replicaID, at: now())
        else { throw StoreError.leaseLost(lease.handlerID) }
        return entry
    }

    func apply(_ checkpoint: Checkpoint, to entry: inout Entry) throws {
        let id = entry.record.id
        // The log continues the one held, and a checkpoint without records holds as many.
        if checkpoint.expectedLastSequence != Int64(entry.log.count) - 1 {
            throw StoreError.sequenceConflict(id, checkpoint.expectedLastSequence + 1)
        }
        let time = now()
        entry.state = checkpoint.state
        entry.log.append(contentsOf: checkpoint.log)
        let consumed = Set(checkpoint.consumedInbox)
        // A finished handler consumes what is left of its inbox: nothing can apply it any more.
        for index in entry.inbox.indices
        where consumed.contains(entry.inbox[index].event.id)
            || (checkpoint.state.status.isFinished && checkpoint.state.quarantine == nil)
        {
            entry.inbox[index].consumed = true
        }
        entry.record.status = checkpoint.state.status
        entry.record.error = checkpoint.state.error
        entry.record.lastSequence = Int64(entry.log.count) - 1
        entry.record.updatedAt = time
        if checkpoint.state.status.isFinished {
            entry.record.result = entry.log.last(where: \.isTerminal)
            entry.record.completedAt = time
            note(.finished, &entry, replica: entry.record.owner)
            entry.record.owner = nil
            entry.record.leaseExpiresAt = nil
        }
    }

    func finishWrite(_ id: HandlerID, _ checkpoint: Checkpoint) {
        if !checkpoint.log.isEmpty { signals.logChanged(id.rawValue) }
        if let notice = checkpoint.state.parentNotice {
            tellParent(HandlerID(notice.parent), InboxEvent(id: notice.inboxID, event: notice.event))
        }
    }

    /// A child's end into its parent's inbox (in the same step as the child's final write, as in
    /// one transaction); a parent that has finished takes nothing.
    func tellParent(_ parent: HandlerID, _ event: InboxEvent) {
        guard var entry = entries[parent], entry.record.status == .running,
            !entry.inbox.contains(where: { $0.event.id == event.id })
        else { return }
        entry.inbox.append((event, false))
        entries[parent] = entry
        signals.inboxChanged(parent.rawValue)
    }

    /// See `HandlerStore.checkpoint(_:lease:)`.
    @discardableResult
    public func checkpoint(_ checkpoint: Checkpoint, lease: Lease) async throws -> HandlerRecord? {
        var entry = try fencedEntry(lease)
        try apply(checkpoint, to: &entry)
        entries[lease.handlerID] = entry
        finishWrite(lease.handlerID, checkpoint)
        return entry.record.status.isFinished ? entry.record : nil
    }

    /// See `HandlerStore.hibernate(_:wakeAt:lease:)`.
    public func hibernate(_ checkpoint: Checkpoint, wakeAt: Date?, lease: Lease) async throws -> Bool {
        var entry = try fencedEntry(lease)
        if entry.inbox.contains(where: { !$0.consumed && !checkpoint.consumedInbox.contains($0.event.id) }) {
            return false
        }
        try apply(checkpoint, to: &entry)
        if entry.record.status == .running {
            note(.hibernated, &entry, replica: entry.record.owner)
            entry.record.owner = nil
            entry.record.leaseExpiresAt = nil
            entry.record.hibernated = true
            entry.record.wakeAt = wakeAt
        }
        entries[lease.handlerID] = entry
        finishWrite(lease.handlerID, checkpoint)
        return true
    }

    /// See `HandlerStore.release(_:lease:)`.
    public func release(_ checkpoint: Checkpoint?, lease: Lease) async throws {
        var entry = try fencedEntry(lease)
        if let checkpoint { try apply(checkpoint, to: &entry) }
        if entry.record.status == .running { note(.released, &entry, replica: entry.record.owner) }
        entry.record.owner = nil
        entry.record.leaseExpiresAt = nil
        entries[lease.handlerID] = entry
        if let checkpoint { finishWrite(lease.handlerID, checkpoint) }
    }
}
