import Foundation
import LeaseholdEngine
import PostgresNIO

/// The statements of the inbox (appends, the pending events), of cancellation and of the
/// retention purge. The lease statements are in `PostgresStore+Statements.swift`.
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
    ///   inbox, and nobody is notified (the claimer runs it). Registrations and lease expiries
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
            AND ((f.owner_replica IS NOT NULL AND (f.lease_expires_at <= clock_timestamp() OR NOT EXISTS (
                    SELECT 1 FROM replicas r
                    WHERE r.id = f.owner_replica AND r.lease_expires_at > clock_timestamp())))
                OR (f.owner_replica IS NULL AND (NOT f.hibernated OR f.wake_at <= clock_timestamp()
                    OR EXISTS (SELECT 1 FROM inserted)
                    OR EXISTS (SELECT 1 FROM inbox i WHERE i.handler_id = f.id AND NOT i.consumed))))),
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

    /// How long (milliseconds) an append that may claim waits for its handler's row lock.
    static let claimLockTimeout = "250"

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

    /// One small transaction: the oldest finished handlers past the retention, skipping rows
    /// another replica's purge (or a cancel) holds, deleted with their log, inbox and lease
    /// history (the trigger of migration 0012).
    static func purgeFinished(ageSeconds: Double, limit: Int) -> PostgresQuery {
        """
        WITH doomed AS (
            SELECT id FROM handlers
            WHERE status <> 'running' AND completed_at < now() - make_interval(secs => \(ageSeconds))
            ORDER BY completed_at LIMIT \(limit)
            FOR UPDATE SKIP LOCKED)
        DELETE FROM handlers h USING doomed WHERE h.id = doomed.id RETURNING h.id
        """
    }
}
