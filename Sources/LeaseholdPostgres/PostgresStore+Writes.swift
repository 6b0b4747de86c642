import Foundation
import LeaseholdEngine
import LeaseholdStore
import PostgresNIO

/// Fenced writes (checkpoint, hibernate, release), the inbox and cancellation.
extension PostgresStore {
    private func checkpointQuery(_ row: CheckpointRow) throws -> PostgresQuery {
        try Statements.checkpoint(
            id: row.id, token: row.token, replica: row.replica, snapshot: row.snapshot, status: row.status,
            error: row.error, result: row.result, expected: row.expected, lastSequence: row.lastSequence,
            sequences: row.sequences,
            records: row.records, consumed: row.consumed)
    }

    /// - Returns: the record when the checkpoint finished the handler.
    @discardableResult
    func runCheckpoint(_ row: CheckpointRow, on connection: PostgresConnection) async throws -> HandlerRecord? {
        let query = try checkpointQuery(row)
        var written = false
        var finished: HandlerRecord?
        do {
            for try await answer in try await connection.checkedExecute(
                prepared(query, as: Shapes.Checkpoint.self), logger: logger)
            {
                written = true
                finished = try Self.writtenRecord(answer).1
            }
        } catch let error as PSQLError
            where error.serverInfo?[.sqlState] == "23505" && error.serverInfo?[.constraintName] == Self.eventLogKey
        {
            throw StoreError.sequenceConflict(HandlerID(row.id), -1)
        }
        if !written { throw StoreError.leaseLost(HandlerID(row.id)) }
        try await tellParent(row, on: connection)
        return finished
    }

    /// In the transaction of a written checkpoint that finished a child: its end into its
    /// parent's inbox (`Statements.tellParent`).
    func tellParent(_ row: CheckpointRow, on connection: PostgresConnection) async throws {
        guard let notice = row.notice else { return }
        try await connection.checkedQuery(
            Statements.tellParent(parent: notice.parent, eventID: notice.id, event: notice.event), logger: logger)
    }

    /// Through group commit when the store's service runs it (one commit shared with the writes
    /// of other handlers), alone otherwise.
    @discardableResult
    public func checkpoint(_ checkpoint: Checkpoint, lease: Lease) async throws -> HandlerRecord? {
        let row = try checkpointRow(checkpoint, lease: lease)
        let outcome = try await commit(.checkpoint(row))
        // Committed: wake this replica's log readers now rather than when the NOTIFY comes back.
        signals.logChanged(lease.handlerID.rawValue)
        guard case .written(let finished) = outcome else { return nil }
        return finished
    }

    /// See `HandlerStore.hibernate(_:wakeAt:lease:)`.
    public func hibernate(_ checkpoint: Checkpoint, wakeAt: Date?, lease: Lease) async throws -> Bool {
        let row = try checkpointRow(checkpoint, lease: lease)
        let id = lease.handlerID.rawValue
        return try await guarded { connection in
            try await connection.checkedTransaction(logger: logger) { connection in
                // Lock first; the count below then runs with a fresh snapshot and sees every inbox
                // row committed before the lock was granted (inbox appends lock the row FOR SHARE,
                // or FOR NO KEY UPDATE when they may claim it).
                var current = false
                for try await valid in try await connection.checkedQuery(
                    Statements.lockForHibernate(id: id, token: lease.token.rawValue, replica: lease.replicaID.rawValue),
                    logger: logger
                ).decode(Bool?.self) {
                    current = valid ?? false
                }
                guard current else { throw StoreError.leaseLost(lease.handlerID) }
                var pending: Int64 = 0
                for try await count in try await connection.checkedQuery(
                    Statements.pendingInboxCount(id: id, excluding: checkpoint.consumedInbox), logger: logger
                ).decode(Int64.self) {
                    pending = count
                }
                if pending > 0 { return false }
                try await runCheckpoint(row, on: connection)
                if !checkpoint.state.status.isFinished {
                    try await releaseLease(lease, hibernate: true, wakeAt: wakeAt, on: connection)
                }
                return true
            }
        }
    }

    private func releaseLease(_ lease: Lease, hibernate: Bool, wakeAt: Date?, on connection: PostgresConnection)
        async throws
    {
        let rows = try await connection.checkedQuery(
            Statements.releaseLease(
                id: lease.handlerID.rawValue, token: lease.token.rawValue, replica: lease.replicaID.rawValue,
                hibernate: hibernate, wakeAt: wakeAt),
            logger: logger)
        var released = false
        for try await _ in rows.decode(String.self) { released = true }
        if !released { throw StoreError.leaseLost(lease.handlerID) }
    }

    /// See `HandlerStore.release(_:lease:)`.
    public func release(_ checkpoint: Checkpoint?, lease: Lease) async throws {
        let row = try checkpoint.map { try checkpointRow($0, lease: lease) }
        try await guarded { connection in
            try await connection.checkedTransaction(logger: logger) { connection in
                if let row { try await runCheckpoint(row, on: connection) }
                if checkpoint?.state.status.isFinished != true {
                    try await releaseLease(lease, hibernate: false, wakeAt: nil, on: connection)
                }
            }
        }
    }

    // MARK: - Inbox

    /// See `HandlerStore.appendInbox(_:_:accepting:from:claim:)`.
    public func appendInbox(
        _ handlerID: HandlerID, _ event: InboxEvent, accepting: [String]?, from replica: ReplicaID?, claim: Bool
    ) async throws -> InboxReceipt {
        let payload = try json(event.event)
        let claim = claim && replica != nil
        let query = Statements.appendInbox(
            id: handlerID.rawValue, eventID: event.id, event: payload, accepting: accepting, replica: replica?.rawValue,
            instance: instance, claim: claim)
        let row = try await committed { connection -> AppendRow? in
            func run<Shape: PreparedShape>(_ shape: Shape.Type) async throws -> AppendRow? {
                var found: AppendRow?
                for try await row in try await connection.checkedExecute(prepared(query, as: shape), logger: logger) {
                    found = try row.decode(AppendRow.self)
                }
                return found
            }
            do {
                return try await claim ? run(Shapes.AppendClaim.self) : run(Shapes.AppendInbox.self)
            } catch let error as PSQLError where claim && error.serverInfo?[.sqlState] == "55P03" {
                throw StoreError.handlerBusy(handlerID)  // the row lock waited past claimLockTimeout
            }
        }
        guard let row else { throw StoreError.handlerNotFound(handlerID) }
        return try receipt(row, replica: replica)
    }

    /// The one row of `Statements.appendInbox`: the record's columns, then snapshot, how, inbox,
    /// accepted, inserted, the owner and hibernation found, and whether it is a suspect.
    typealias AppendRow = (
        String, String, String, String, String?, String?, Date, Date, Date?, String?, Date?, Int64, Bool, Int64, Date?,
        Data?, String?, String?, Bool, Bool, String?, Bool, Bool
    )

    /// Read after the commit: a snapshot or inbox this replica cannot decode (one written by a
    /// newer version during a rolling upgrade) must not roll back an append that others can run.
    /// The claim it made then stays unrun here and is released as an orphan by the lease keeper.
    private func receipt(_ row: AppendRow, replica: ReplicaID?) throws -> InboxReceipt {
        let (
            a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, snapshot, how, inbox, accepted, inserted, owner, hibernated,
            suspect
        ) = row
        let record = try Self.record((a, b, c, d, e, f, g, h, i, j, k, l, m, n, o))
        guard record.status == .running else { throw StoreError.handlerFinished(record.id) }
        var receipt = InboxReceipt(
            owner: owner.map { ReplicaID($0) }, hibernated: hibernated, inserted: inserted, accepted: accepted,
            workflowName: record.workflowName)
        let decoder = JSONDecoder()
        do {
            let events = try inbox.map { try decoder.decode([InboxEvent].self, from: Data($0.utf8)) }
            if let how, let replica {
                let state =
                    try snapshot.map { try decoder.decode(HandlerState.self, from: $0) }
                    ?? HandlerState(workflowName: record.workflowName)
                receipt.claimed = ClaimedHandler(
                    record: record, lease: Lease(handlerID: record.id, replicaID: replica, token: record.fencingToken),
                    state: state, acquired: LeaseChange.Kind(rawValue: how) ?? .claimed, pendingInbox: events,
                    suspect: suspect)
            } else if let events {
                receipt.pending = PendingInbox(token: record.fencingToken, events: events)
            }
        } catch {
            logger.error(
                "appended, but the handler's snapshot or inbox cannot be read here",
                metadata: ["handler_id": "\(record.id)", "error": "\(error)"])
        }
        return receipt
    }

    /// See `HandlerStore.pendingInbox(of:)`.
    public func pendingInbox(of handlerIDs: [HandlerID]) async throws -> [HandlerID: [InboxEvent]] {
        guard !handlerIDs.isEmpty else { return [:] }
        return try await guarded(gated: false) { connection in
            var events: [HandlerID: [InboxEvent]] = [:]
            let query = Statements.pendingInboxOf(ids: handlerIDs.map(\.rawValue))
            for try await (handlerID, eventID, text) in try await connection.checkedQuery(query, logger: logger).decode(
                (String, String, String).self)
            {
                events[HandlerID(handlerID), default: []].append(
                    InboxEvent(id: eventID, event: try AnyEvent(jsonText: text)))
            }
            return events
        }
    }

    /// See `HandlerStore.pendingInbox(_:)`.
    public func pendingInbox(_ handlerID: HandlerID) async throws -> [InboxEvent] {
        try await guarded(gated: false) { connection in
            var events: [InboxEvent] = []
            let query = Statements.pendingInbox(id: handlerID.rawValue)
            for try await row in try await connection.checkedExecute(
                prepared(query, as: Shapes.PendingInbox.self), logger: logger)
            {
                let (eventID, text) = try row.decode((String, String).self)
                events.append(InboxEvent(id: eventID, event: try AnyEvent(jsonText: text)))
            }
            return events
        }
    }

    // MARK: - Cancel and delete

    /// See `HandlerStore.cancel(_:)`.
    public func cancel(_ handlerID: HandlerID) async throws -> CancelOutcome {
        let id = handlerID.rawValue
        let cancelled = try await guarded { connection in
            try await connection.checkedTransaction(logger: logger) { connection -> Bool in
                var found: (String, Int64)?
                for try await row in try await connection.checkedQuery(Statements.lockForCancel(id: id), logger: logger)
                    .decode((String, Int64).self)
                {
                    found = row
                }
                guard let (status, last) = found else { throw StoreError.handlerNotFound(handlerID) }
                guard status == HandlerStatus.running.rawValue else { return false }
                let terminal = LogRecord.cancelled(sequence: last + 1)
                let text = try json(terminal)
                try await connection.checkedQuery(
                    Statements.appendLog(id: id, sequence: last + 1, record: text), logger: logger)
                try await connection.checkedQuery(
                    Statements.markCancelled(id: id, sequence: last + 1, result: text), logger: logger)
                _ = try await connection.checkedQuery(Statements.notify(Notification.log + id), logger: logger)
                    .collect()
                _ = try await connection.checkedQuery(Statements.notify(Notification.inbox + id), logger: logger)
                    .collect()
                return true
            }
        }
        guard let record = try await handler(handlerID) else { throw StoreError.handlerNotFound(handlerID) }
        return cancelled ? .cancelled(record) : .alreadyFinished(record)
    }

    /// See `HandlerStore.delete(_:run:)`.
    public func delete(_ handlerID: HandlerID, run runID: String) async throws -> Bool {
        try await committed { connection in
            var deleted = false
            for try await _ in try await connection.checkedQuery(
                Statements.delete(id: handlerID.rawValue, runID: runID), logger: logger
            )
            .decode(String.self) {
                deleted = true
            }
            if deleted {
                try await connection.checkedQuery(
                    Statements.notify(Notification.log + handlerID.rawValue), logger: logger)
                try await connection.checkedQuery(
                    Statements.notify(Notification.inbox + handlerID.rawValue), logger: logger)
            }
            return deleted
        }
    }

    /// See `HandlerStore.recordCrash(of:handlers:all:signal:)`.
    public func recordCrash(of replica: ReplicaID, handlers: [HandlerID], all: Bool, signal: Int32) async throws
        -> [HandlerID]
    {
        try await guarded { connection in
            let query = Statements.recordCrash(
                replica: replica.rawValue, ids: handlers.map(\.rawValue), all: all, signal: signal)
            var marked: [HandlerID] = []
            for try await id in try await connection.checkedQuery(query, logger: logger).decode(String.self) {
                marked.append(HandlerID(id))
            }
            return marked
        }
    }

    /// See `HandlerStore.preventCreation(_:reason:)`.
    public func preventCreation(_ new: NewHandler, reason: String?) async throws -> HandlerRecord? {
        let blocked = try await committed { connection in
            let query = Statements.preventCreation(
                id: new.id.rawValue, workflow: new.workflowName, runID: new.runID,
                reason: reason ?? "not started")
            var blocked = false
            for try await inserted in try await connection.checkedQuery(query, logger: logger).decode(Bool.self) {
                blocked = inserted
            }
            if blocked, reason == nil {
                // The in-flight creation is resolved (rolled back); the id is left free again.
                try await connection.checkedQuery(Statements.deleteUnstarted(id: new.id.rawValue), logger: logger)
            } else if blocked {
                try await connection.checkedQuery(
                    Statements.notify(Notification.log + new.id.rawValue), logger: logger)
            }
            return blocked
        }
        if blocked { return nil }
        // The creation committed first; a purge since (past the retention) would leave nothing
        // to find, and then it ran and finished: the record is gone either way.
        guard let record = try await handler(new.id) else { throw StoreError.handlerNotFound(new.id) }
        return record
    }

    /// See `HandlerStore.releaseQuarantine(_:)`.
    public func releaseQuarantine(_ handlerID: HandlerID) async throws -> Bool {
        try await committed { connection in
            var released = false
            for try await _ in try await connection.checkedQuery(
                Statements.releaseQuarantine(id: handlerID.rawValue), logger: logger
            ).decode(String.self) {
                released = true
            }
            if released {
                try await connection.checkedQuery(
                    Statements.notify(Notification.inbox + handlerID.rawValue), logger: logger)
            }
            return released
        }
    }

    /// See `HandlerStore.purgeFinished(olderThan:limit:)`.
    public func purgeFinished(olderThan age: Duration, limit: Int) async throws -> [HandlerID] {
        try await guarded { connection in
            var deleted: [HandlerID] = []
            let query = Statements.purgeFinished(ageSeconds: Self.seconds(age), limit: limit)
            for try await id in try await connection.checkedQuery(query, logger: logger).decode(String.self) {
                deleted.append(HandlerID(id))
            }
            return deleted
        }
    }
}
