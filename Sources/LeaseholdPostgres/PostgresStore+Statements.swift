import Foundation
import PostgresNIO

/// Every SQL statement of the Postgres store, one function each. Values are always bound.
extension PostgresStore {
    enum Statements {
        /// The effective expiry of a handler's lease (NULL when unowned): the earlier of the
        /// lease's own cap and its owner's registration. The same as the SQL function
        /// `leasehold_lease_expiry` (migration 0002), written inline: a SQL function with a
        /// subquery is not inlined and is planned on every call, which made a one-row record read
        /// take 0.23-0.25 ms instead of 0.13 ms inline (PL/pgSQL: 0.14-0.19 ms; pgbench, prepared,
        /// 4 clients, 2 busy cores).
        static func leaseExpiry(owner: String, cap: String) -> String {
            """
            CASE WHEN \(owner) IS NULL THEN NULL ELSE LEAST(\(cap), COALESCE(
                (SELECT r.lease_expires_at FROM replicas r WHERE r.id = \(owner)), 'epoch')) END
            """
        }

        /// "This lease is current", the one definition used by every fenced write (checkpoint,
        /// hibernation, release): the handler row's token and owner are the writer's, the lease's
        /// own cap has not passed, and the writer's registration is current. `row` is the handlers
        /// row (its columns, not a join, so that a write that waited on the row lock re-checks the
        /// row's newest version); `token` and `writer` are SQL expressions for the writer's lease.
        ///
        /// Inline: as a function (migration 0006's `leasehold_lease_is_current`, PL/pgSQL, kept in
        /// the schema for replicas of earlier versions during a rolling upgrade) each evaluation is
        /// a call into PL/pgSQL, four per echo `run` (pg_stat_statements), about 30 µs each.
        static func leaseIsCurrent(row: String, token: String, writer: String) -> String {
            """
            (\(row).fencing_token = \(token) AND \(row).owner_replica = \(writer) AND \(row).lease_expires_at > now() \
            AND EXISTS (SELECT 1 FROM replicas lr WHERE lr.id = \(writer) AND lr.lease_expires_at > now()))
            """
        }

        /// The `handlers` columns of a `HandlerRecord`, in the order `RecordRow` decodes them: the
        /// one list every record-answering statement's columns are made from.
        static let recordColumnNames = [
            "id", "workflow_name", "run_id", "status", "error", "result", "started_at", "updated_at", "completed_at",
            "owner_replica", "lease_expires_at", "fencing_token", "hibernated", "last_sequence", "wake_at",
        ]

        /// `recordColumnNames` of the row named `alias`, as stored (a CTE passing rows on).
        static func sourceColumns(_ alias: String) -> String {
            recordColumnNames.map { "\(alias).\($0)" }.joined(separator: ", ")
        }

        /// The columns of a `HandlerRecord` from the handlers row `h`, as `RecordRow` decodes them:
        /// the result as text, the lease expiry the effective one (`leaseExpiry`).
        static let recordColumns = recordColumnNames.map { name in
            switch name {
            case "result": "h.result::text"
            case "lease_expires_at": leaseExpiry(owner: "h.owner_replica", cap: "h.lease_expires_at")
            default: "h.\(name)"
            }
        }.joined(separator: ", ")

        /// The record's columns as an UPDATE of handlers returns them (its new values, under the
        /// same names, not the snapshot): a checkpoint answers the record it committed.
        static let writtenColumns = sourceColumns("handlers")

        /// What a checkpoint answers for each row it wrote: `recordColumns`, except that the lease
        /// expiry is the row's own column. Only finished rows are decoded, and for them (no owner,
        /// no lease) that is what `leaseExpiry` gives, NULL, without its lookup of the owner's
        /// registration on every running row.
        static let checkpointAnswer = recordColumnNames.map { $0 == "result" ? "h.result::text" : "h.\($0)" }
            .joined(separator: ", ")

        /// Renews the replica's registration, which carries every lease it holds: one row,
        /// whatever the number of leases. A lapsed (or missing) registration is void: every lease
        /// it carried is released and the replica registered anew (the answer is then empty).
        /// `fresh` (a replica process starting) voids the registration whatever its state.
        /// Excluded leases stop being renewed: their own cap is set to the expiry renewed from.
        /// Answers one header row (no id: the database's time, whether a newer process took the
        /// registration, and which database node answered: `leasehold_database_node()`, migration
        /// 0010), then the leases held (id, token).
        static func renewal(
            replica: String, instance: String, address: String, ttlSeconds: Double, excluding: [String], fresh: Bool
        ) -> PostgresQuery {
            """
            WITH previous AS (
                SELECT COALESCE(bool_or(lease_expires_at > now() AND instance = \(instance)), false)
                        AND NOT \(fresh) AS current,
                    COALESCE(bool_or(instance <> \(instance)), false) AND NOT \(fresh) AS superseded,
                    max(lease_expires_at) AS expires
                FROM replicas WHERE id = \(replica)),
            registered AS (
                INSERT INTO replicas (id, address, lease_expires_at, instance)
                VALUES (\(replica), \(address), now() + make_interval(secs => \(ttlSeconds)), \(instance))
                ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), address = EXCLUDED.address,
                    lease_expires_at = EXCLUDED.lease_expires_at, instance = EXCLUDED.instance,
                    started_at = CASE WHEN \(fresh) THEN now() ELSE replicas.started_at END
                WHERE \(fresh) OR replicas.instance = EXCLUDED.instance
                RETURNING id),
            voided AS (
                UPDATE handlers SET owner_replica = NULL, lease_expires_at = NULL, updated_at = now()
                WHERE owner_replica = \(replica) AND NOT (SELECT current FROM previous)
                    AND NOT (SELECT superseded FROM previous)
                RETURNING id, fencing_token),
            voided_history AS (
                INSERT INTO lease_history (handler_id, change, replica, token)
                SELECT id, 'voided', \(replica), fencing_token FROM voided),
            capped AS (
                UPDATE handlers SET lease_expires_at = (SELECT expires FROM previous)
                WHERE id = ANY(\(excluding)::text[]) AND owner_replica = \(replica) AND lease_expires_at = 'infinity'
                    AND (SELECT current FROM previous)
                RETURNING id)
            SELECT NULL::text AS id, NULL::bigint AS fencing_token, now() AS database_time, superseded,
                n.system_identifier, n.timeline, n.node, n.synchronous_standbys
            FROM previous, leasehold_database_node() n
            UNION ALL
            SELECT h.id, h.fencing_token, now(), false, NULL, NULL, NULL, NULL FROM handlers h
            WHERE h.owner_replica = \(replica) AND h.status = 'running' AND h.lease_expires_at > now()
                AND (SELECT current FROM previous)
                AND (SELECT count(*) FROM registered) + (SELECT count(*) FROM voided) + (SELECT count(*) FROM capped) >= 0
            """
        }

        /// Removes this process's registration (graceful shutdown, after hand-off); a lease still
        /// carried by it is released rather than left to a registration that no longer exists.
        /// A newer process's registration under the same id is left alone.
        static func deregister(replica: String, instance: String) -> PostgresQuery {
            """
            WITH mine AS (SELECT id FROM replicas WHERE id = \(replica) AND instance = \(instance)),
            voided AS (
                UPDATE handlers SET owner_replica = NULL, lease_expires_at = NULL, updated_at = now()
                WHERE owner_replica IN (SELECT id FROM mine)
                RETURNING id, fencing_token),
            voided_history AS (
                INSERT INTO lease_history (handler_id, change, replica, token)
                SELECT id, 'released', \(replica), fencing_token FROM voided)
            DELETE FROM replicas WHERE id IN (SELECT id FROM mine) AND (SELECT count(*) FROM voided) >= 0
            """
        }

        /// A reserved token the sequence is past (never to be issued by it again); false when the
        /// sequence is behind it (the database went back in time since the reservation).
        static func tokenIsPast(_ token: String) -> String {
            "\(token) <= COALESCE(pg_sequence_last_value('leasehold_fencing_tokens'::regclass), 0)"
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

        /// `count` values of the token sequence, in a transaction that takes a transaction id.
        static func reserveTokens(_ count: Int) -> PostgresQuery {
            """
            SELECT nextval('leasehold_fencing_tokens') FROM generate_series(1, \(count))
            WHERE pg_current_xact_id() IS NOT NULL
            """
        }

        /// Claims up to `limit` claimable handlers (unowned with work waiting, hibernated with an
        /// inbox event or a due timer, or owned under an expired lease: the owner's registration
        /// lapsed or the lease's own cap passed), or just `only`, for a replica whose registration
        /// is current. The candidate ids come from small partial indexes, each branch bounded, so
        /// one claim costs O(limit) whatever the number of claimable or hibernated handlers;
        /// concurrent claimers skip each other's locked rows. Each claim raises the fencing token.
        /// Each claimed row carries its pending inbox (JSON, in order), so that the claimer starts
        /// the runtime without another round trip — read with the statement's snapshot, so only
        /// when the row it locked is the version that snapshot saw. A checkpoint (or hibernation)
        /// of the old owner that committed between the snapshot and the lock is in the locked row
        /// (FOR UPDATE re-reads the newest version) but not in the snapshot's inbox: its consumed
        /// events would look pending and be applied twice. Then the inbox is NULL and read after
        /// launch instead.
        static func claim(replica: String, instance: String, limit: Int, only: String?) -> PostgresQuery {
            let window = limit * 8
            return """
                WITH lapsed AS (SELECT id FROM replicas WHERE lease_expires_at <= now()),
                candidates AS (
                    SELECT h.id, h.owner_replica AS previous_owner, h.hibernated AS was_hibernated,
                        h.xmin AS locked_version
                    FROM handlers h
                    WHERE EXISTS (SELECT 1 FROM replicas
                        WHERE id = \(replica) AND instance = \(instance) AND lease_expires_at > now())
                    AND (h.id = \(only) OR (\(only)::text IS NULL AND h.id IN (
                        (SELECT id FROM handlers
                            WHERE status = 'running' AND owner_replica IS NOT NULL AND lease_expires_at <= now()
                            LIMIT \(window))
                        UNION ALL (SELECT id FROM handlers
                            WHERE status = 'running' AND owner_replica IN (SELECT id FROM lapsed) LIMIT \(window))
                        UNION ALL (SELECT id FROM handlers
                            WHERE status = 'running' AND owner_replica IS NULL AND hibernated = false LIMIT \(window))
                        UNION ALL (SELECT id FROM handlers
                            WHERE status = 'running' AND owner_replica IS NULL AND hibernated = true AND wake_at <= now()
                            LIMIT \(window))
                        UNION ALL (SELECT i.handler_id FROM inbox i JOIN handlers r ON r.id = i.handler_id
                            WHERE NOT i.consumed AND r.status = 'running' LIMIT \(window)))))
                    AND h.status = 'running'
                    AND ((h.owner_replica IS NOT NULL AND (h.lease_expires_at <= now() OR NOT EXISTS (
                            SELECT 1 FROM replicas r WHERE r.id = h.owner_replica AND r.lease_expires_at > now())))
                        OR (h.owner_replica IS NULL AND (NOT h.hibernated OR h.wake_at <= now()
                            OR EXISTS (SELECT 1 FROM inbox i WHERE i.handler_id = h.id AND NOT i.consumed))))
                    LIMIT \(limit)
                    FOR UPDATE OF h SKIP LOCKED),
                claimed AS (
                    UPDATE handlers h SET owner_replica = \(replica), lease_expires_at = 'infinity',
                        fencing_token = nextval('leasehold_fencing_tokens'), hibernated = false, wake_at = NULL,
                        updated_at = now()
                    FROM candidates c WHERE h.id = c.id
                    RETURNING h.*, c.previous_owner, c.was_hibernated, c.locked_version),
                acquired AS (
                    SELECT claimed.*, CASE WHEN previous_owner IS NOT NULL THEN 'failed_over'
                            WHEN was_hibernated THEN 'reloaded' ELSE 'claimed' END AS how
                    FROM claimed),
                history AS (
                    INSERT INTO lease_history (handler_id, change, replica, token)
                    SELECT id, how, owner_replica, fencing_token FROM acquired)
                SELECT \(unescaped: recordColumns), h.snapshot, h.how,
                    CASE WHEN h.locked_version = (SELECT x.xmin FROM handlers x WHERE x.id = h.id) THEN
                        COALESCE((SELECT json_agg(json_build_object('id', i.event_id, 'event', i.event) ORDER BY i.seq)
                            FROM inbox i WHERE i.handler_id = h.id AND NOT i.consumed), '[]')::text
                    END,
                    \(unescaped: suspect("h"))
                FROM acquired h
                """
        }

        /// The error of a quarantined handler starts so (`Tick.Kind.quarantine`); its finishing
        /// checkpoint leaves its inbox for the release.
        static func notQuarantined(_ error: String) -> String {
            "COALESCE(\(error), '') NOT LIKE 'quarantined:%'"
        }

        /// Whether the handler in `alias` is a suspect: a replica died of a fault while one of
        /// its steps ran there (migration 0014). An index probe on a table that is empty but for crashes.
        static func suspect(_ alias: String) -> String {
            "EXISTS (SELECT 1 FROM handler_crashes x WHERE x.handler_id = \(alias).id AND x.run_id = \(alias).run_id)"
        }

        /// A failed record for `id` unless one exists; an insert of the id still in flight is
        /// waited for (ON CONFLICT does), so the answer is final: true when this one stands.
        static func preventCreation(id: String, workflow: String, runID: String, reason: String) -> PostgresQuery {
            """
            WITH blocked AS (
                INSERT INTO handlers (id, workflow_name, run_id, status, error, fencing_token, completed_at)
                VALUES (\(id), \(workflow), \(runID), 'failed', \(reason), nextval('leasehold_fencing_tokens'), now())
                ON CONFLICT (id) DO NOTHING
                RETURNING id)
            SELECT EXISTS (SELECT 1 FROM blocked)
            """
        }

        /// Takes back the record `preventCreation` inserted, in its transaction (no trigger's
        /// children exist yet: nothing else was written for it).
        static func deleteUnstarted(id: String) -> PostgresQuery {
            "DELETE FROM handlers WHERE id = \(id) AND status = 'failed' AND last_sequence = -1"
        }

        /// The crash watcher's one statement: each named handler still running gets a crash row,
        /// whoever owns it now (the dead replica had a step of it running, so it owned it; a
        /// restart of that id or a quick claimer may have taken it since, and the mark must not be
        /// lost to that); with `all`, each running handler the dead replica still owns. Answers
        /// the ids marked.
        static func recordCrash(replica: String, ids: [String], all: Bool, signal: Int32) -> PostgresQuery {
            """
            INSERT INTO handler_crashes (handler_id, run_id, replica, token, signal)
            SELECT id, run_id, \(replica), fencing_token, \(Int(signal))
            FROM handlers
            WHERE status = 'running'
                AND (id = ANY(\(ids)::text[]) OR (\(all)::bool AND owner_replica = \(replica)))
            ON CONFLICT (handler_id, token) DO NOTHING
            RETURNING handler_id
            """
        }

        /// A quarantined handler (failed, its snapshot saying why) runs again: running, unowned and
        /// not hibernated, so the next claim takes it; its crash rows stay (it is still a suspect).
        static func releaseQuarantine(id: String) -> PostgresQuery {
            """
            UPDATE handlers SET status = 'running', error = NULL, result = NULL, completed_at = NULL,
                owner_replica = NULL, lease_expires_at = NULL, hibernated = false, wake_at = NULL, updated_at = now()
            WHERE id = \(id) AND status = 'failed' AND snapshot IS NOT NULL
                AND convert_from(snapshot, 'UTF8')::jsonb ? 'quarantine'
            RETURNING id
            """
        }

        /// One fenced statement: the handler row update is conditional on the lease; the log insert
        /// and inbox consumption join on its result, so a stale lease writes nothing at all. The
        /// checkpoint that finishes a handler consumes what is left of its inbox (nothing can apply
        /// it any more, and unconsumed rows would keep showing up as claim candidates) — unless
        /// it quarantines it (`quarantinedError`): a release runs it on, with those events.
        /// It writes only over the row's `expected` last sequence (the one its writer last saw
        /// durable): over a database that lost a checkpoint it is refused rather than masking the
        /// loss (a failover the replica has not checked yet; `LeaseKeeper+Database`).
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
                SELECT pg_notify('\(unescaped: Notification.channel)', '\(unescaped: Notification.log)' || h.id) FROM h WHERE cardinality(\(sequences)::bigint[]) > 0),
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
            SELECT pg_notify('\(unescaped: Notification.channel)', '\(unescaped: Notification.inbox)' || told.handler_id)
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
}
