import Foundation
import LeaseholdEngine
import LeaseholdKit
import LeaseholdStore
import PostgresNIO

/// Reads: records, logs, the cluster's replicas, counts and the lease history. None is gated by
/// the node gate: a read cannot write over anything.
extension PostgresStore {
    /// A `HandlerRecord` as `Statements.recordColumns` selects it.
    typealias RecordRow = (
        String, String, String, String, String?, String?, Date, Date, Date?, String?, Date?, Int64, Bool, Int64, Date?
    )

    static func record(_ row: PostgresRow) throws -> HandlerRecord {
        try record(row.decode(RecordRow.self))
    }

    static func record(_ columns: RecordRow) throws -> HandlerRecord {
        let (
            id, workflow, runID, status, error, result, startedAt, updatedAt, completedAt, owner, leaseExpiresAt, token,
            hibernated, lastSequence, wakeAt
        ) = columns
        return HandlerRecord(
            id: HandlerID(id), workflowName: workflow, runID: runID,
            status: HandlerStatus(rawValue: status) ?? .failed, error: error,
            result: try result.map { try LogRecord(jsonText: $0) },
            startedAt: startedAt, updatedAt: updatedAt, completedAt: completedAt, owner: owner.map { ReplicaID($0) },
            leaseExpiresAt: leaseExpiresAt, fencingToken: FencingToken(token), hibernated: hibernated,
            lastSequence: lastSequence, wakeAt: wakeAt)
    }

    /// The handler's record; nil when there is no handler with this id.
    public func handler(_ handlerID: HandlerID) async throws -> HandlerRecord? {
        try await guarded(gated: false) { connection in
            var found: HandlerRecord?
            let query = Statements.handler(id: handlerID.rawValue)
            for try await row in try await connection.checkedExecute(
                prepared(query, as: Shapes.Handler.self), logger: logger)
            {
                found = try Self.record(row)
            }
            return found
        }
    }

    /// The handlers matching `filter`, oldest first (by start), at most 10,000.
    public func handlers(_ filter: HandlerFilter) async throws -> [HandlerRecord] {
        try await guarded(gated: false) { connection in
            var records: [HandlerRecord] = []
            for try await row in try await connection.checkedQuery(
                Statements.handlers(
                    statuses: filter.statuses.map(\.rawValue), workflows: filter.workflows, idPrefix: filter.idPrefix,
                    limit: 10_000),
                logger: logger)
            {
                records.append(try Self.record(row))
            }
            return records
        }
    }

    /// See `HandlerStore.events(_:after:limit:)`.
    public func events(_ handlerID: HandlerID, after sequence: Int64, limit: Int) async throws -> [LogRecord] {
        try await guarded(gated: false) { connection in
            var records: [LogRecord] = []
            let query = Statements.events(id: handlerID.rawValue, after: sequence, limit: limit)
            for try await row in try await connection.checkedExecute(
                prepared(query, as: Shapes.Events.self), logger: logger)
            {
                records.append(try LogRecord(jsonText: try row.decode(String.self)))
            }
            return records
        }
    }

    /// Every registered replica, by id; `alive` when it renewed within `ttl`.
    public func replicas(aliveWithin ttl: Duration) async throws -> [ReplicaRecord] {
        try await guarded(gated: false) { connection in
            var replicas: [ReplicaRecord] = []
            for try await (id, address, startedAt, heartbeatAt, owned, alive) in try await connection.checkedQuery(
                Statements.replicas(ttlSeconds: ttl.seconds), logger: logger
            ).decode((String, String, Date, Date, Int64, Bool).self) {
                replicas.append(
                    ReplicaRecord(
                        id: ReplicaID(id), address: address, startedAt: startedAt, heartbeatAt: heartbeatAt,
                        handlersOwned: Int(owned), alive: alive))
            }
            return replicas
        }
    }

    /// Counts of all handlers by status (see `HandlerCounts`).
    public func counts() async throws -> HandlerCounts {
        try await guarded(gated: false) { connection in
            var counts = HandlerCounts()
            for try await (status, hibernated, count, expired) in try await connection.checkedQuery(
                Statements.counts(), logger: logger
            )
            .decode((String, Bool, Int64, Int64).self) {
                counts.expiredLeases += Int(expired)
                switch HandlerStatus(rawValue: status) {
                case .running: if hibernated { counts.hibernated += Int(count) } else { counts.running += Int(count) }
                case .completed: counts.completed += Int(count)
                case .failed: counts.failed += Int(count)
                case .cancelled: counts.cancelled += Int(count)
                case nil: break
                }
            }
            return counts
        }
    }

    static func change(_ row: (String, Date, String, String?, Int64)) -> LeaseChange {
        let (id, at, kind, replica, token) = row
        return LeaseChange(
            handlerID: HandlerID(id), at: at, kind: LeaseChange.Kind(rawValue: kind) ?? .released,
            replica: replica.map { ReplicaID($0) }, token: FencingToken(token))
    }

    /// See `HandlerStore.leaseHistory(_:)`.
    public func leaseHistory(_ handlerID: HandlerID) async throws -> [LeaseChange] {
        try await changes(Statements.leaseHistory(id: handlerID.rawValue))
    }

    /// See `HandlerStore.recentLeaseChanges(limit:)`.
    public func recentLeaseChanges(limit: Int) async throws -> [LeaseChange] {
        try await changes(Statements.recentLeaseChanges(limit: limit))
    }

    /// Lease history rows as the two history statements select them.
    private func changes(_ query: PostgresQuery) async throws -> [LeaseChange] {
        try await guarded(gated: false) { connection in
            var changes: [LeaseChange] = []
            for try await row in try await connection.checkedQuery(query, logger: logger)
                .decode((String, Date, String, String?, Int64).self)
            {
                changes.append(Self.change(row))
            }
            return changes
        }
    }
}

extension PostgresStore.Statements {
    static func leaseHistory(id: String) -> PostgresQuery {
        """
        SELECT handler_id, at, change, replica, token FROM lease_history WHERE handler_id = \(id) ORDER BY seq
        """
    }

    static func recentLeaseChanges(limit: Int) -> PostgresQuery {
        """
        SELECT handler_id, at, change, replica, token FROM lease_history ORDER BY seq DESC LIMIT \(limit)
        """
    }

    static func handler(id: String) -> PostgresQuery {
        """
        SELECT \(unescaped: recordColumns)
        FROM handlers h WHERE h.id = \(id)
        """
    }

    /// `idPrefix` compares with `starts_with` (no LIKE pattern: an id may hold `_`).
    static func handlers(statuses: [String], workflows: [String], idPrefix: String?, limit: Int) -> PostgresQuery {
        """
        SELECT \(unescaped: recordColumns)
        FROM handlers h
        WHERE (cardinality(\(statuses)::text[]) = 0 OR h.status = ANY(\(statuses)::text[]))
            AND (cardinality(\(workflows)::text[]) = 0 OR h.workflow_name = ANY(\(workflows)::text[]))
            AND (\(idPrefix)::text IS NULL OR starts_with(h.id, \(idPrefix)::text))
        ORDER BY h.started_at, h.id
        LIMIT \(limit)
        """
    }

    static func events(id: String, after: Int64, limit: Int) -> PostgresQuery {
        """
        SELECT record::text FROM event_log
        WHERE handler_id = \(id) AND sequence > \(after)
        ORDER BY sequence LIMIT \(limit)
        """
    }

    static func replicas(ttlSeconds: Double) -> PostgresQuery {
        """
        SELECT r.id, r.address, r.started_at, r.heartbeat_at,
            (SELECT count(*) FROM handlers h WHERE h.owner_replica = r.id),
            r.heartbeat_at > now() - make_interval(secs => \(ttlSeconds))
        FROM replicas r ORDER BY r.id
        """
    }

    static func counts() -> PostgresQuery {
        """
        SELECT status, hibernated, count(*),
            count(*) FILTER (WHERE owner_replica IS NOT NULL
                AND \(unescaped: leaseExpiry(owner: "owner_replica", cap: "lease_expires_at")) <= now())
        FROM handlers GROUP BY status, hibernated
        """
    }
}
