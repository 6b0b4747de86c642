import Foundation
import LeaseholdEngine
import LeaseholdStore
import PostgresNIO

/// The inbox: appending an event (the claiming append takes an unowned handler's lease in the
/// same statement), reading what is pending, and the NOTIFY that tells other replicas.
extension PostgresStore {
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
}

extension PostgresStore.Statements {
    /// One statement: append an external event and do what the appending replica would do
    /// next. Locks the handler row (so an append and a hibernation, which locks it FOR UPDATE
    /// and then counts the pending inbox, serialize; after waiting, the row's newest version
    /// is used): FOR SHARE when it will not claim (appends to one handler do not wait for each
    /// other), FOR NO KEY UPDATE when it may, and then it waits at most `claimLockTimeout`
    /// milliseconds for the row (a claiming append holds its replica's load of that handler,
    /// and with it that replica's wake-ups of it; past that it fails with 55P03 and the
    /// caller appends without claiming). It inserts the event unless the handler finished or
    /// is of a workflow the event is not for (idempotent by event id), then:
    /// - with `claim`, when the handler is claimable (as in `claim`) and the replica's
    ///   registration is current, claims it: the answer carries its snapshot and pending
    ///   inbox, and nobody is notified (the claimer runs it). "Claimable" is `claimable`, the
    ///   claim's own predicate. Registrations and lease expiries
    ///   are judged by `clock_timestamp()`, after the row lock: `now()` is the transaction's
    ///   start, and the lock may have been waited for;
    /// - otherwise notifies, and when the replica owns the handler answers its pending inbox.
    ///
    /// The inbox is read with the statement's snapshot, the new event added (a CTE's insert is
    /// not in that snapshot): answered only when the locked row is the version the snapshot
    /// saw, as in `claim`. The one row answered is the handler's record (as claimed, or as
    /// found), then snapshot, how, inbox, accepted, inserted, the owner and hibernation found,
    /// and whether it is a suspect.
    static func appendInbox(
        id: String, eventID: String, event: String, accepting: [String]?, replica: String?, instance: String,
        claim: Bool
    ) -> PostgresQuery {
        """
        WITH found AS (
            SELECT \(unescaped: sourceColumns("h")), h.xmin AS locked_version
            FROM handlers h WHERE h.id = \(id)
                AND (SELECT set_config('lock_timeout', CASE WHEN \(claim)::bool THEN '\(unescaped: claimLockTimeout)'
                    ELSE current_setting('lock_timeout') END, true)) IS NOT NULL
            FOR \(unescaped: claim ? "NO KEY UPDATE" : "SHARE")),
        accepted AS (
            SELECT f.id FROM found f WHERE f.status = 'running'
                AND (\(accepting)::text[] IS NULL OR f.workflow_name = ANY(\(accepting)::text[]))),
        inserted AS (
            INSERT INTO inbox (handler_id, event_id, event)
            SELECT id, \(eventID), \(event)::jsonb FROM accepted
            ON CONFLICT (handler_id, event_id) DO NOTHING
            RETURNING seq, event_id, event),
        candidate AS (
            SELECT f.id, f.owner_replica AS previous_owner, f.hibernated AS was_hibernated
            FROM found f
            WHERE \(claim)::bool AND f.id IN (SELECT id FROM accepted)
            AND EXISTS (SELECT 1 FROM replicas
                WHERE id = \(replica)::text AND instance = \(instance) AND lease_expires_at > clock_timestamp())
            AND \(unescaped: claimable("f", at: "clock_timestamp()", pendingToo: "EXISTS (SELECT 1 FROM inserted)"))),
        claimed AS (
            UPDATE handlers h SET owner_replica = \(replica)::text, lease_expires_at = 'infinity',
                fencing_token = nextval('leasehold_fencing_tokens'), hibernated = false, wake_at = NULL,
                updated_at = now()
            FROM candidate c WHERE h.id = c.id
            RETURNING \(unescaped: sourceColumns("h")), h.snapshot,
                CASE WHEN c.previous_owner IS NOT NULL THEN 'failed_over'
                    WHEN c.was_hibernated THEN 'reloaded' ELSE 'claimed' END AS how),
        history AS (
            INSERT INTO lease_history (handler_id, change, replica, token)
            SELECT id, how, owner_replica, fencing_token FROM claimed),
        notified AS (
            SELECT pg_notify('\(unescaped: PostgresStore.Notification.channel)', '\(unescaped: PostgresStore.Notification.inbox)' || id)
            FROM accepted WHERE NOT EXISTS (SELECT 1 FROM claimed)),
        answer AS (
            SELECT \(unescaped: sourceColumns("c")), c.snapshot, c.how FROM claimed c
            UNION ALL
            SELECT \(unescaped: sourceColumns("f")), NULL::bytea, NULL::text FROM found f
            WHERE NOT EXISTS (SELECT 1 FROM claimed))
        SELECT \(unescaped: recordColumns), h.snapshot, h.how,
            CASE WHEN EXISTS (SELECT 1 FROM accepted) AND (h.how IS NOT NULL OR h.owner_replica = \(replica)::text)
                AND f.locked_version = (SELECT x.xmin FROM handlers x WHERE x.id = f.id) THEN
                COALESCE((SELECT json_agg(json_build_object('id', p.event_id, 'event', p.event) ORDER BY p.seq)
                    FROM (SELECT i.seq, i.event_id, i.event FROM inbox i WHERE i.handler_id = f.id AND NOT i.consumed
                        UNION ALL SELECT seq, event_id, event FROM inserted) p), '[]')::text
            END,
            EXISTS (SELECT 1 FROM accepted), EXISTS (SELECT 1 FROM inserted), f.owner_replica, f.hibernated,
            \(unescaped: suspect("f"))
        FROM answer h, found f
        WHERE (SELECT count(*) FROM notified) >= 0
        """
    }

    static func notify(_ payload: String) -> PostgresQuery {
        "SELECT pg_notify('\(unescaped: PostgresStore.Notification.channel)', \(payload))"
    }

    static func pendingInbox(id: String) -> PostgresQuery {
        "SELECT event_id, event::text FROM inbox WHERE handler_id = \(id) AND NOT consumed ORDER BY seq"
    }

    /// The pending inbox of several handlers (the reconciliation of a replica's live handlers).
    static func pendingInboxOf(ids: [String]) -> PostgresQuery {
        """
        SELECT handler_id, event_id, event::text FROM inbox
        WHERE handler_id = ANY(\(ids)::text[]) AND NOT consumed ORDER BY handler_id, seq
        """
    }
}
