import Foundation
import LeaseholdEngine
import LeaseholdKit
import LeaseholdStore
import PostgresNIO

/// Registrations, renewals, fencing tokens and claims: what decides which replica holds a
/// handler. Claims take rows with `FOR UPDATE SKIP LOCKED`; a lease's expiry is judged by the
/// database's clock (`Statements.leaseExpiry`).
extension PostgresStore {
    /// See `HandlerStore.renew(_:address:ttl:excluding:)`.
    public func renew(_ replica: ReplicaID, address: String, ttl: Duration, excluding: [HandlerID]) async throws
        -> Renewal
    {
        try await renew(replica, address: address, ttl: ttl, excluding: excluding, fresh: false)
    }

    /// See `HandlerStore.register(_:address:ttl:)`.
    @discardableResult
    public func register(_ replica: ReplicaID, address: String, ttl: Duration) async throws -> DatabaseNode? {
        try await renew(replica, address: address, ttl: ttl, excluding: [], fresh: true).database
    }

    private func renew(_ replica: ReplicaID, address: String, ttl: Duration, excluding: [HandlerID], fresh: Bool)
        async throws -> Renewal
    {
        try await committed(gated: false) { connection in
            let query = Statements.renewal(
                replica: replica.rawValue, instance: instance, address: address, ttlSeconds: ttl.seconds,
                excluding: excluding.map(\.rawValue), fresh: fresh)
            var renewal = Renewal(held: [:], databaseTime: nil)
            for try await row in try await connection.checkedExecute(
                prepared(query, as: Shapes.Renewal.self), logger: logger)
            {
                let (id, token, time, superseded, system, timeline, node, standbys) = try row.decode(
                    (String?, Int64?, Date, Bool, String?, Int32?, String?, Int32?).self)
                if superseded { throw StoreError.registrationSuperseded(replica) }
                if let id, let token {
                    renewal.held[HandlerID(id)] = FencingToken(token)
                } else {
                    renewal.databaseTime = time
                    if let system, let timeline, let node {
                        renewal.database = DatabaseNode(
                            systemIdentifier: system, timeline: Int(timeline), address: node,
                            synchronousStandbys: standbys.flatMap { $0 >= 0 ? Int($0) : nil })
                    }
                }
            }
            return renewal
        }
    }

    /// See `HandlerStore.trust(_:)`.
    public func trust(_ node: DatabaseNode) {
        nodeGate.trust(NodeGate.Identity(systemIdentifier: node.systemIdentifier, timeline: node.timeline))
    }

    /// See `HandlerStore.deregister(_:)`.
    public func deregister(_ replica: ReplicaID) async throws {
        try await guarded(gated: false) { connection in
            _ = try await connection.checkedQuery(
                Statements.deregister(replica: replica.rawValue, instance: instance), logger: logger)
        }
    }

    /// One transaction that takes a transaction id, so that its COMMIT flushes the WAL: the
    /// sequence's advance is then durable before any of these tokens is used (`nextval` alone
    /// writes no commit record, and after a crash could hand the same values out again).
    public func reserveTokens(_ count: Int) async throws -> [FencingToken] {
        guard count > 0 else { return [] }
        return try await committed { connection in
            var tokens: [FencingToken] = []
            for try await token in try await connection.checkedQuery(
                Statements.reserveTokens(count), logger: logger
            ).decode(Int64.self) {
                tokens.append(FencingToken(token))
            }
            return tokens.sorted()
        }
    }

    /// See `HandlerStore.claim(_:limit:only:)`.
    public func claim(_ replica: ReplicaID, limit: Int, only: HandlerID?) async throws -> [ClaimedHandler] {
        try await guarded { connection in
            let query = Statements.claim(
                replica: replica.rawValue, instance: instance, limit: limit, only: only?.rawValue)
            let rows = try await connection.checkedExecute(prepared(query, as: Shapes.Claim.self), logger: logger)
            var claimed: [ClaimedHandler] = []
            let decoder = JSONDecoder()
            for try await row in rows {
                let (a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, snapshot, how, inbox, suspect) = try row.decode(
                    (
                        String, String, String, String, String?, String?, Date, Date, Date?, String?, Date?, Int64,
                        Bool, Int64, Date?, Data?, String, String?, Bool
                    ).self)
                // Row by row: the claim has committed, so a row that cannot be read here (a
                // snapshot of a newer version, during a rolling upgrade) must cost only its own
                // handler — left unrun, released as an orphan — never the rest of the batch.
                do {
                    let record = try Self.record((a, b, c, d, e, f, g, h, i, j, k, l, m, n, o))
                    let state =
                        try snapshot.map { try decoder.decode(HandlerState.self, from: $0) }
                        ?? HandlerState(workflowName: record.workflowName)
                    claimed.append(
                        ClaimedHandler(
                            record: record,
                            lease: Lease(handlerID: record.id, replicaID: replica, token: record.fencingToken),
                            state: state, acquired: LeaseChange.Kind(rawValue: how) ?? .claimed,
                            pendingInbox: try inbox.map { try decoder.decode([InboxEvent].self, from: Data($0.utf8)) },
                            suspect: suspect))
                } catch {
                    logger.error(
                        "claimed, but the handler's record, snapshot or inbox cannot be read here; left unrun",
                        metadata: ["handler_id": "\(a)", "error": "\(error)"])
                }
            }
            return claimed
        }
    }

    /// The append statement exactly as `appendInbox` sends it with a claim for `replica` (a test
    /// pauses it between its snapshot and its row lock).
    public func appendClaimStatement(id: String, eventID: String, event: String, replica: String) -> PostgresQuery {
        Statements.appendInbox(
            id: id, eventID: eventID, event: event, accepting: nil, replica: replica, instance: instance, claim: true)
    }

    /// The claim statement exactly as `claim` sends it (benchmarks compare against it raw).
    public func claimStatement(replica: String, limit: Int) -> PostgresQuery {
        Statements.claim(replica: replica, instance: instance, limit: limit, only: nil)
    }
}

extension PostgresStore.Statements {
    /// How long (milliseconds) an append that may claim waits for its handler's row lock.
    static let claimLockTimeout = "250"

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

    /// `count` values of the token sequence, in a transaction that takes a transaction id.
    static func reserveTokens(_ count: Int) -> PostgresQuery {
        """
        SELECT nextval('leasehold_fencing_tokens') FROM generate_series(1, \(count))
        WHERE pg_current_xact_id() IS NOT NULL
        """
    }

    /// Whether the handler row `alias` may be claimed at `time` (an SQL time expression), its
    /// status aside: owned under a lease that lapsed (its own expiry passed, or its owner's
    /// registration did), or unowned and due (not hibernated, its timer due, or an event pending
    /// in its inbox, or `pendingToo`, for an event the statement's snapshot cannot see yet).
    /// The one definition of "claimable", shared by `claim` and the claiming `appendInbox`.
    static func claimable(_ alias: String, at time: String, pendingToo: String? = nil) -> String {
        let h = alias
        let pending = pendingToo.map { "\n        OR \($0)" } ?? ""
        return """
            ((\(h).owner_replica IS NOT NULL AND (\(h).lease_expires_at <= \(time) OR NOT EXISTS (
                    SELECT 1 FROM replicas r WHERE r.id = \(h).owner_replica AND r.lease_expires_at > \(time))))
                OR (\(h).owner_replica IS NULL AND (NOT \(h).hibernated OR \(h).wake_at <= \(time)\(pending)
                    OR EXISTS (SELECT 1 FROM inbox i WHERE i.handler_id = \(h).id AND NOT i.consumed))))
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
                AND \(unescaped: claimable("h", at: "now()"))
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
}
