import Foundation
import LeaseholdEngine
import LeaseholdKit
import LeaseholdStore
import NIOCore
import PostgresNIO

/// Every write of a handler's own row under its lease: creation, checkpoints (alone and in group
/// commit's batches), hibernation, release and cancellation. Each is conditional on the fencing
/// token (`Statements.leaseIsCurrent`) and commits in an explicit transaction (`committed`).
extension PostgresStore {
    /// Through group commit when the store's service runs it, alone otherwise.
    public func create(_ handler: NewHandler, owner: ReplicaID) async throws -> ClaimedHandler {
        let write = GroupCommit.Write.create(
            handler, owner: owner, event: try json(handler.startEvent.event), token: 0, first: nil)
        guard case .created(let claimed) = try await commit(write) else {
            throw StoreError.corrupt("group commit answered a creation with something else")
        }
        return claimed
    }

    /// Through group commit when the store's service runs it, alone otherwise: the creation and
    /// the first checkpoint are two statements of one flush's transaction.
    @discardableResult
    public func create(_ handler: NewHandler, owner: ReplicaID, token: FencingToken, first: Checkpoint) async throws
        -> HandlerRecord?
    {
        let lease = Lease(handlerID: handler.id, replicaID: owner, token: token)
        let write = GroupCommit.Write.create(
            handler, owner: owner, event: try json(handler.startEvent.event), token: token.rawValue,
            first: try checkpointRow(first, lease: lease))
        guard case .written(let finished) = try await commit(write) else {
            throw StoreError.corrupt("group commit answered a creation with its checkpoint with something else")
        }
        signals.logChanged(handler.id.rawValue)  // as `checkpoint`: this replica's readers at once
        return finished
    }

    func createAlone(_ handler: NewHandler, owner: ReplicaID, token: Int64 = 0) async throws -> ClaimedHandler {
        try await committed { connection in try await insert(handler, owner: owner, token: token, on: connection) }
    }

    func insert(_ handler: NewHandler, owner: ReplicaID, token: Int64, on connection: PostgresConnection)
        async throws -> ClaimedHandler
    {
        let query = Statements.create(
            id: handler.id.rawValue, workflow: handler.workflowName, runID: handler.runID,
            owner: owner.rawValue, eventID: handler.startEvent.id, event: try json(handler.startEvent.event),
            token: token)
        let rows = try await connection.checkedExecute(prepared(query, as: Shapes.Create.self), logger: logger)
        var created: HandlerRecord?
        for try await row in rows { created = try Self.record(row) }
        guard let created else {
            if token != 0, try await existing([handler.id.rawValue], on: connection).isEmpty {
                throw StoreError.tokenAhead(FencingToken(token))
            }
            throw StoreError.handlerExists(handler.id)
        }
        return Self.claimed(created, handler: handler, owner: owner)
    }

    /// A checkpoint as the database stores it (one `handlers` row, its new log rows, the inbox
    /// ids it consumed), under the lease it is fenced by.
    struct CheckpointRow: Sendable {
        var id: String
        var token: Int64
        var replica: String
        var snapshot: Data
        var status: String
        var error: String?
        var result: String?
        /// The last sequence the row must hold for the write to go in (see `Statements.checkpoint`).
        var expected: Int64
        var lastSequence: Int64
        var sequences: [Int64]
        var records: [String]
        var consumed: [String]
        /// A finished child's end, for its parent's inbox (`HandlerState.parentNotice`).
        var notice: (parent: String, id: String, event: String)?
    }

    func checkpointRow(_ checkpoint: Checkpoint, lease: Lease) throws -> CheckpointRow {
        let state = checkpoint.state
        let terminal = state.status.isFinished ? checkpoint.log.last(where: \.isTerminal) : nil
        return CheckpointRow(
            id: lease.handlerID.rawValue, token: lease.token.rawValue, replica: lease.replicaID.rawValue,
            snapshot: try encoder.encode(state), status: state.status.rawValue, error: state.error,
            result: try terminal.map { try json($0) }, expected: checkpoint.expectedLastSequence,
            lastSequence: state.nextSequence - 1,
            sequences: checkpoint.log.map(\.sequence), records: try checkpoint.log.map { try json($0) },
            consumed: checkpoint.consumedInbox,
            notice: try state.parentNotice.map { ($0.parent, $0.inboxID, try json($0.event)) })
    }

    /// Writes one batch in one transaction; on a refusal by the server (the whole transaction
    /// rolled back) writes each alone, so only the write at fault fails.
    func flush(_ batch: [GroupCommit.Queued]) async -> [UInt64: Result<GroupCommit.Outcome, any Error>] {
        let together: [UInt64: Result<GroupCommit.Outcome, any Error>]?
        do {
            together = try await guarded { connection in
                do {
                    return try await connection.checkedTransaction(logger: logger) { connection in
                        try await writeBatch(batch, on: connection)
                    }
                } catch let error as PSQLError where Self.rolledBack(error) {
                    return nil
                } catch is FirstCheckpointRefused {
                    return nil  // rolled back: written one by one below
                }
            }
        } catch is CancellationError {
            // The store is stopping (a writer's connection request was cancelled).
            return Dictionary(
                uniqueKeysWithValues: batch.map { ($0.number, .failure(StoreError.unavailable("store stopping"))) })
        } catch {
            // The outcome is unknown (the connection failed): as for a lone write, the callers
            // retry and recognise a write that did land by its token and sequences.
            return Dictionary(uniqueKeysWithValues: batch.map { ($0.number, .failure(error)) })
        }
        if let together { return together }
        groupCommit?.recordSplit()
        return await withTaskGroup(of: (UInt64, Result<GroupCommit.Outcome, any Error>).self) { group in
            for queued in batch {
                group.addTask {
                    do {
                        return (queued.number, .success(try await self.writeAlone(queued.write)))
                    } catch {
                        return (queued.number, .failure(error))
                    }
                }
            }
            var results: [UInt64: Result<GroupCommit.Outcome, any Error>] = [:]
            for await (number, result) in group { results[number] = result }
            return results
        }
    }

    /// How long a flush waits for a row lock before it is refused (a fraction of the time after
    /// which a write looks stuck: a quarter of a lease TTL for a replica's store). A row another
    /// transaction holds (an append on a connection that went silent) must not hold the whole
    /// flush, and with it every handler in it, until their writes look stuck: past this, the
    /// flush is refused and its writes go one by one, where only that handler's write waits.
    var lockTimeout: Duration? { requestTimeout.map { $0 / 8 } }

    /// `lockTimeout` as the batch statements set it (`lock_timeout`, in milliseconds).
    var lockTimeoutSetting: String? { lockTimeout.map { "\($0.wholeMilliseconds)" } }

    /// Through group commit while its writers run, alone otherwise (no group commit, or before
    /// the store's service started).
    func commit(_ write: GroupCommit.Write) async throws -> GroupCommit.Outcome {
        guard let groupCommit else { return try await writeAlone(write) }
        do {
            return try await groupCommit.submit(write)
        } catch is GroupCommit.NotRunning {
            return try await writeAlone(write)
        }
    }

    func writeAlone(_ write: GroupCommit.Write) async throws -> GroupCommit.Outcome {
        switch write {
        case .create(let handler, let owner, _, let token, nil):
            return .created(try await createAlone(handler, owner: owner, token: token))
        case .create(let handler, let owner, _, let token, let first?):
            return .written(
                try await committed { connection in
                    _ = try await insert(handler, owner: owner, token: token, on: connection)
                    return try await runCheckpoint(first, on: connection)
                })
        case .checkpoint(let row):
            return .written(try await committed { connection in try await runCheckpoint(row, on: connection) })
        }
    }

    // Long because it is one transaction whose statements must run in this order (the
    // creations, then every checkpoint, the first ones of handlers created just before
    // included), each answer matched back to its waiter.
    private func writeBatch(_ batch: [GroupCommit.Queued], on connection: PostgresConnection) async throws
        -> [UInt64: Result<GroupCommit.Outcome, any Error>]
    {
        var results: [UInt64: Result<GroupCommit.Outcome, any Error>] = [:]
        var creates: [(number: UInt64, handler: NewHandler, owner: ReplicaID, event: String, token: Int64)] = []
        var firsts: [UInt64: CheckpointRow] = [:]
        var checkpoints: [(UInt64, CheckpointRow)] = []
        for queued in batch {
            switch queued.write {
            case .create(let handler, let owner, let event, let token, let first):
                creates.append((queued.number, handler, owner, event, token))
                firsts[queued.number] = first
            case .checkpoint(let row): checkpoints.append((queued.number, row))
            }
        }
        if !creates.isEmpty {
            var created: [String: HandlerRecord] = [:]
            let query = Statements.createBatch(
                ids: creates.map(\.handler.id.rawValue), workflows: creates.map(\.handler.workflowName),
                runIDs: creates.map(\.handler.runID), owners: creates.map(\.owner.rawValue),
                eventIDs: creates.map(\.handler.startEvent.id), events: creates.map(\.event),
                tokens: creates.map(\.token), lockTimeout: lockTimeoutSetting)
            for try await row in try await connection.checkedExecute(
                prepared(query, as: Shapes.CreateBatch.self), logger: logger)
            {
                let record = try Self.record(row)
                created[record.id.rawValue] = record
            }
            let missing = creates.filter { created[$0.handler.id.rawValue] == nil }
            let taken = try await existing(missing.filter { $0.token != 0 }.map(\.handler.id.rawValue), on: connection)
            for create in creates {
                guard let record = created[create.handler.id.rawValue] else {
                    // Not inserted: its id is taken, or its reserved token is ahead of the sequence.
                    let refused = create.token != 0 && !taken.contains(create.handler.id.rawValue)
                    results[create.number] = .failure(
                        refused
                            ? StoreError.tokenAhead(FencingToken(create.token))
                            : StoreError.handlerExists(create.handler.id))
                    continue
                }
                if let first = firsts[create.number] {
                    // Created in this transaction: its first checkpoint goes with the others below.
                    checkpoints.append((create.number, first))
                } else {
                    results[create.number] = .success(
                        .created(Self.claimed(record, handler: create.handler, owner: create.owner)))
                }
            }
        }
        if !checkpoints.isEmpty {
            var matched: [String: HandlerRecord?] = [:]
            let rows = checkpoints.map(\.1)
            let query = Statements.checkpointBatch(rows, lockTimeout: lockTimeoutSetting)
            for try await row in try await connection.checkedExecute(
                prepared(query, as: Shapes.CheckpointBatch.self), logger: logger)
            {
                let (id, finished) = try Self.writtenRecord(row)
                matched[id] = finished
            }
            for (number, row) in checkpoints {
                if let finished = matched[row.id] {
                    try await tellParent(row, on: connection)
                    results[number] = .success(.written(finished))
                } else if firsts[number] != nil {
                    // A creation stands only with its first checkpoint: refuse the flush, and its
                    // writes go one by one (where that creation rolls back alone).
                    throw FirstCheckpointRefused()
                } else {
                    results[number] = .failure(StoreError.leaseLost(HandlerID(row.id)))
                }
            }
        }
        return results
    }

    /// A flush in which a handler's creation went in but its first checkpoint did not.
    struct FirstCheckpointRefused: Error {}

    /// Which of `ids` are handlers (read only when a creation under a reserved token was not
    /// inserted: to tell an id in use from a token the sequence is not past).
    func existing(_ ids: [String], on connection: PostgresConnection) async throws -> Set<String> {
        guard !ids.isEmpty else { return [] }
        var found: Set<String> = []
        for try await id in try await connection.checkedQuery(
            "SELECT id FROM handlers WHERE id = ANY(\(ids)::text[])", logger: logger
        ).decode(String.self) {
            found.insert(id)
        }
        return found
    }

    /// A row of a checkpoint's answer (`Statements.checkpointAnswer`): its handler id, and the
    /// record when the checkpoint finished the handler (only then decoded whole).
    static func writtenRecord(_ row: PostgresRow) throws -> (String, HandlerRecord?) {
        let columns = row.makeRandomAccess()
        let id = try columns[0].decode(String.self)
        guard try columns[3].decode(String.self) != HandlerStatus.running.rawValue else { return (id, nil) }
        do {
            return (id, try record(row))
        } catch {
            // The write has happened (this row is its answer) and must not fail for a record this
            // replica cannot read: without one, a waiting `run` reads the record back, and that
            // read reports the error.
            return (id, nil)
        }
    }

    /// A created handler as its creator holds it: its first lease and an empty state.
    static func claimed(_ record: HandlerRecord, handler: NewHandler, owner: ReplicaID) -> ClaimedHandler {
        ClaimedHandler(
            record: record, lease: Lease(handlerID: handler.id, replicaID: owner, token: record.fencingToken),
            state: HandlerState(workflowName: handler.workflowName), acquired: .created,
            pendingInbox: [handler.startEvent])
    }

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
}

extension PostgresStore.Statements {
    /// `create` for many handlers in one statement: the ones whose id exists already are left out
    /// of the answer. A token 0 is the next of the sequence; another is one `reserveTokens` answered.
    ///
    /// Both batch statements set the flush's `lock_timeout` (milliseconds; nil: the server's) for
    /// their transaction themselves, as their input is first read, before any row is locked: one
    /// round trip less per flush than a `SET LOCAL`.
    static func createBatch(
        ids: [String], workflows: [String], runIDs: [String], owners: [String], eventIDs: [String], events: [String],
        tokens: [Int64], lockTimeout: String?
    ) -> PostgresQuery {
        """
        WITH input AS (
            SELECT * FROM unnest(\(ids)::text[], \(workflows)::text[], \(runIDs)::text[], \(owners)::text[],
                \(eventIDs)::text[], \(events)::text[], \(tokens)::bigint[]) WITH ORDINALITY
                AS i(id, workflow_name, run_id, owner, event_id, event, token, ord)
            WHERE (SELECT set_config('lock_timeout', COALESCE(\(lockTimeout)::text, current_setting('lock_timeout')), true))
                IS NOT NULL),
        created AS (
            INSERT INTO handlers (id, workflow_name, run_id, owner_replica, lease_expires_at, fencing_token)
            SELECT id, workflow_name, run_id, owner, 'infinity',
                CASE WHEN token = 0 THEN nextval('leasehold_fencing_tokens') ELSE token END
            FROM input WHERE token = 0 OR \(unescaped: PostgresStore.Statements.tokenIsPast("token")) ORDER BY ord
            ON CONFLICT (id) DO NOTHING
            RETURNING *),
        queued AS (
            INSERT INTO inbox (handler_id, event_id, event)
            SELECT created.id, i.event_id, i.event::jsonb FROM created JOIN input i ON i.id = created.id),
        history AS (
            INSERT INTO lease_history (handler_id, change, replica, token)
            SELECT created.id, 'created', created.owner_replica, created.fencing_token FROM created)
        SELECT \(unescaped: recordColumns)
        FROM created h
        """
    }

    /// `checkpoint` for many handlers in one statement, each row fenced by its own lease; answers
    /// the ids whose lease held (only those wrote anything). The rows whose lease is current are
    /// locked first, in id order, so that batches which share rows cannot deadlock; a stale row is
    /// never locked (it would hold up its current owner's writes for nothing).
    /// Long because it is one SQL statement, built as the text it sends.
    static func checkpointBatch(_ rows: [PostgresStore.CheckpointRow], lockTimeout: String?) -> PostgresQuery {
        var logIDs: [String] = []
        var logSequences: [Int64] = []
        var logRecords: [String] = []
        var consumedIDs: [String] = []
        var consumedEvents: [String] = []
        for row in rows {
            logIDs += Array(repeating: row.id, count: row.sequences.count)
            logSequences += row.sequences
            logRecords += row.records
            consumedIDs += Array(repeating: row.id, count: row.consumed.count)
            consumedEvents += row.consumed
        }
        let ids = rows.map(\.id)
        let tokens = rows.map(\.token)
        let replicas = rows.map(\.replica)
        let snapshots = rows.map { ByteBuffer(bytes: $0.snapshot) }
        let statuses = rows.map(\.status)
        let errors = rows.map { $0.error ?? "" }
        let hasError = rows.map { $0.error != nil }
        let results = rows.map { $0.result ?? "" }
        let hasResult = rows.map { $0.result != nil }
        let lastSequences = rows.map(\.lastSequence)
        let expected = rows.map(\.expected)
        return """
            WITH input AS (
                SELECT * FROM unnest(\(ids)::text[], \(tokens)::bigint[], \(replicas)::text[], \(snapshots)::bytea[],
                    \(statuses)::text[], \(errors)::text[], \(hasError)::bool[], \(results)::text[],
                    \(hasResult)::bool[], \(lastSequences)::bigint[], \(expected)::bigint[])
                    AS i(id, token, replica, snapshot, status, error, has_error, result, has_result, last_sequence,
                        expected)
                WHERE (SELECT set_config('lock_timeout', COALESCE(\(lockTimeout)::text, current_setting('lock_timeout')), true))
                    IS NOT NULL),
            locked AS (
                SELECT h.id FROM handlers h JOIN input i ON i.id = h.id
                WHERE \(unescaped: PostgresStore.Statements.leaseIsCurrent(row: "h", token: "i.token", writer: "i.replica"))
                ORDER BY h.id FOR UPDATE OF h),
            h AS (
                UPDATE handlers SET snapshot = i.snapshot, status = i.status,
                    error = CASE WHEN i.has_error THEN i.error END,
                    result = CASE WHEN i.has_result THEN i.result::jsonb END,
                    last_sequence = i.last_sequence, updated_at = now(),
                    completed_at = CASE WHEN i.status = 'running' THEN NULL ELSE now() END,
                    owner_replica = CASE WHEN i.status = 'running' THEN handlers.owner_replica ELSE NULL END,
                    lease_expires_at = CASE WHEN i.status = 'running' THEN handlers.lease_expires_at ELSE NULL END
                FROM input i
                WHERE handlers.id = i.id AND (SELECT count(*) FROM locked) >= 0 AND handlers.last_sequence = i.expected
                    AND \(unescaped: PostgresStore.Statements.leaseIsCurrent(row: "handlers", token: "i.token", writer: "i.replica"))
                RETURNING \(unescaped: PostgresStore.Statements.writtenColumns), i.token, i.replica),
            logged AS (
                INSERT INTO event_log (handler_id, sequence, record)
                SELECT l.id, l.seq, l.rec::jsonb
                FROM unnest(\(logIDs)::text[], \(logSequences)::bigint[], \(logRecords)::text[]) AS l(id, seq, rec)
                WHERE l.id IN (SELECT id FROM h)
                RETURNING 1),
            consumed AS (
                UPDATE inbox SET consumed = true FROM h
                WHERE inbox.handler_id = h.id AND NOT inbox.consumed
                    AND ((h.status <> 'running' AND \(unescaped: PostgresStore.Statements.notQuarantined("h.error")))
                        OR (inbox.handler_id, inbox.event_id) IN (
                        SELECT * FROM unnest(\(consumedIDs)::text[], \(consumedEvents)::text[])))
                RETURNING 1),
            notified AS (
                SELECT pg_notify('\(unescaped: PostgresStore.Notification.channel)', '\(unescaped: PostgresStore.Notification.log)' || h.id)
                FROM h WHERE h.id IN (SELECT unnest(\(logIDs)::text[]))),
            finished AS (
                INSERT INTO lease_history (handler_id, change, replica, token)
                SELECT h.id, 'finished', h.replica, h.token FROM h WHERE h.status <> 'running'
                RETURNING 1)
            SELECT \(unescaped: PostgresStore.Statements.checkpointAnswer) FROM h
            WHERE (SELECT count(*) FROM logged) + (SELECT count(*) FROM consumed) + (SELECT count(*) FROM notified)
                + (SELECT count(*) FROM finished) >= 0
            """
    }

    static func lockForCancel(id: String) -> PostgresQuery {
        "SELECT status, last_sequence FROM handlers WHERE id = \(id) FOR UPDATE"
    }

    static func appendLog(id: String, sequence: Int64, record: String) -> PostgresQuery {
        "INSERT INTO event_log (handler_id, sequence, record) VALUES (\(id), \(sequence), \(record)::jsonb)"
    }

    /// A cancelled child's parent learns of it from the child's start event (which every child
    /// has, even one that never ran): `ChildWorkflowFinished` with status `cancelled`.
    static func markCancelled(id: String, sequence: Int64, result: String) -> PostgresQuery {
        """
        WITH link AS (
            SELECT event->'value'->'\(unescaped: ParentLink.startField)'->>'handler_id' AS parent,
                event->'value'->'\(unescaped: ParentLink.startField)'->>'child_id' AS child
            FROM inbox WHERE handler_id = \(id) AND event_id = 'start'),
        told AS (
            INSERT INTO inbox (handler_id, event_id, event)
            SELECT p.id, 'child:' || link.child, jsonb_build_object('type', '\(unescaped: EventType.childFinished.name)',
                'value', jsonb_build_object('child_id', link.child, 'status', 'cancelled'))
            FROM link JOIN handlers p ON p.id = link.parent WHERE p.status = 'running'
            ON CONFLICT (handler_id, event_id) DO NOTHING
            RETURNING handler_id),
        woken AS (
            SELECT pg_notify('\(unescaped: PostgresStore.Notification.channel)', '\(unescaped: PostgresStore.Notification.inbox)' || told.handler_id)
            FROM told),
        leftover AS (UPDATE inbox SET consumed = true WHERE handler_id = \(id) AND NOT consumed),
        cancelled AS (
            UPDATE handlers SET status = 'cancelled', result = \(result)::jsonb, last_sequence = \(sequence),
                fencing_token = nextval('leasehold_fencing_tokens'), owner_replica = NULL, lease_expires_at = NULL, hibernated = false,
                wake_at = NULL, updated_at = now(), completed_at = now()
            WHERE id = \(id)
            RETURNING id, fencing_token)
        INSERT INTO lease_history (handler_id, change, replica, token)
        SELECT id, 'cancelled', NULL, fencing_token FROM cancelled WHERE (SELECT count(*) FROM woken) >= 0
        """
    }

    /// `token` 0: the next of the token sequence; else a token `reserveTokens` answered, used
    /// only when the sequence is past it (`tokenIsPast`; else nothing is inserted).
    static func create(
        id: String, workflow: String, runID: String, owner: String, eventID: String,
        event: String, token: Int64
    ) -> PostgresQuery {
        """
        WITH created AS (
            INSERT INTO handlers (id, workflow_name, run_id, owner_replica, lease_expires_at, fencing_token)
            SELECT \(id), \(workflow), \(runID), \(owner), 'infinity',
                CASE WHEN t.token = 0 THEN nextval('leasehold_fencing_tokens') ELSE t.token END
            FROM (SELECT \(token)::bigint AS token) t
            WHERE t.token = 0 OR \(unescaped: tokenIsPast("t.token"))
            ON CONFLICT (id) DO NOTHING
            RETURNING *),
        queued AS (
            INSERT INTO inbox (handler_id, event_id, event)
            SELECT created.id, \(eventID), \(event)::jsonb FROM created),
        history AS (
            INSERT INTO lease_history (handler_id, change, replica, token)
            SELECT created.id, 'created', created.owner_replica, created.fencing_token FROM created)
        SELECT \(unescaped: recordColumns)
        FROM created h
        """
    }

    /// One fenced statement: the handler row update is conditional on the lease; the log insert
    /// and inbox consumption join on its result, so a stale lease writes nothing at all. The
    /// checkpoint that finishes a handler consumes what is left of its inbox (nothing can apply
    /// it any more, and unconsumed rows would keep showing up as claim candidates) — unless
    /// it quarantines it (`quarantinedError`): a release runs it on, with those events.
    /// It writes only over the row's `expected` last sequence (the one its writer last saw
    /// durable): over a database that lost a checkpoint it is refused rather than masking the
    /// loss (a failover the replica has not checked yet; `LeaseKeeper+FailoverCheck`).
    static func checkpoint(
        id: String, token: Int64, replica: String, snapshot: Data, status: String, error: String?,
        result: String?, expected: Int64, lastSequence: Int64, sequences: [Int64], records: [String],
        consumed: [String]
    ) throws -> PostgresQuery {
        try """
        WITH h AS (
            UPDATE handlers SET snapshot = \(snapshot), status = \(status), error = \(error),
                result = \(result)::text::jsonb, last_sequence = \(lastSequence), updated_at = now(),
                completed_at = CASE WHEN \(status) = 'running' THEN NULL ELSE now() END,
                owner_replica = CASE WHEN \(status) = 'running' THEN handlers.owner_replica ELSE NULL END,
                lease_expires_at = CASE WHEN \(status) = 'running' THEN handlers.lease_expires_at ELSE NULL END
            FROM (SELECT \(token)::bigint AS token, \(replica)::text AS writer) w
            WHERE handlers.id = \(id) AND handlers.last_sequence = \(expected)
                AND \(unescaped: leaseIsCurrent(row: "handlers", token: "w.token", writer: "w.writer"))
            RETURNING \(unescaped: writtenColumns)),
        logged AS (
            INSERT INTO event_log (handler_id, sequence, record)
            SELECT h.id, s.seq, s.rec::jsonb FROM h, unnest(\(sequences)::bigint[], \(records)::text[]) AS s(seq, rec)
            RETURNING 1),
        consumed AS (
            UPDATE inbox SET consumed = true FROM h
            WHERE inbox.handler_id = h.id AND NOT inbox.consumed
                AND (inbox.event_id = ANY(\(consumed)::text[])
                    OR (\(status) <> 'running' AND \(unescaped: notQuarantined("h.error"))))
            RETURNING 1),
        notified AS (
            SELECT pg_notify('\(unescaped: PostgresStore.Notification.channel)', '\(unescaped: PostgresStore.Notification.log)' || h.id) FROM h WHERE cardinality(\(sequences)::bigint[]) > 0),
        finished AS (
            INSERT INTO lease_history (handler_id, change, replica, token)
            SELECT h.id, 'finished', \(replica), \(token) FROM h WHERE \(status) <> 'running'
            RETURNING 1)
        SELECT \(unescaped: checkpointAnswer)
        FROM h
        WHERE (SELECT count(*) FROM logged) + (SELECT count(*) FROM consumed) + (SELECT count(*) FROM notified)
            + (SELECT count(*) FROM finished) >= 0
        """
    }

    /// A finished child's end into its parent's inbox (`HandlerState.parentNotice`), and the
    /// parent's owner woken; nothing when the parent has finished. Sent in the transaction of
    /// the checkpoint that finished the child, after it, and only for such a checkpoint: every
    /// other checkpoint's statement stays as it was (with this in every checkpoint statement,
    /// the failover tests stalled one run in two, 2026-12-07).
    static func tellParent(parent: String, eventID: String, event: String) -> PostgresQuery {
        """
        WITH told AS (
            INSERT INTO inbox (handler_id, event_id, event)
            SELECT p.id, \(eventID), \(event)::jsonb FROM handlers p WHERE p.id = \(parent) AND p.status = 'running'
            ON CONFLICT (handler_id, event_id) DO NOTHING
            RETURNING handler_id)
        SELECT pg_notify('\(unescaped: PostgresStore.Notification.channel)', '\(unescaped: PostgresStore.Notification.inbox)' || told.handler_id)
        FROM told
        """
    }

    /// Locks the row and says whether the lease is still current.
    static func lockForHibernate(id: String, token: Int64, replica: String) -> PostgresQuery {
        """
        SELECT \(unescaped: leaseIsCurrent(row: "h", token: "w.token", writer: "w.writer"))
        FROM handlers h, (SELECT \(token)::bigint AS token, \(replica)::text AS writer) w
        WHERE h.id = \(id) FOR UPDATE OF h
        """
    }

    static func pendingInboxCount(id: String, excluding: [String]) -> PostgresQuery {
        """
        SELECT count(*) FROM inbox
        WHERE handler_id = \(id) AND NOT consumed AND NOT (event_id = ANY(\(excluding)::text[]))
        """
    }

    static func releaseLease(id: String, token: Int64, replica: String, hibernate: Bool, wakeAt: Date?)
        -> PostgresQuery
    {
        """
        WITH released AS (
            UPDATE handlers SET owner_replica = NULL, lease_expires_at = NULL,
                hibernated = (\(hibernate) AND status = 'running'), wake_at = \(wakeAt), updated_at = now()
            FROM (SELECT \(token)::bigint AS token, \(replica)::text AS writer) w
            WHERE handlers.id = \(id)
                AND \(unescaped: leaseIsCurrent(row: "handlers", token: "w.token", writer: "w.writer"))
            RETURNING handlers.id, handlers.status, handlers.fencing_token),
        history AS (
            INSERT INTO lease_history (handler_id, change, replica, token)
            SELECT id, CASE WHEN \(hibernate) THEN 'hibernated' ELSE 'released' END, \(replica), fencing_token
            FROM released WHERE status = 'running')
        SELECT id FROM released
        """
    }
}
