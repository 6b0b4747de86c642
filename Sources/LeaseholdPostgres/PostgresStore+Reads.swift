import Foundation
import LeaseholdEngine
import LeaseholdStore
import PostgresNIO

/// Reads: records, logs, replicas and counts.
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
                Statements.replicas(ttlSeconds: Self.seconds(ttl)), logger: logger
            ).decode((String, String, Date, Date, Int64, Bool).self) {
                replicas.append(
                    ReplicaRecord(
                        id: ReplicaID(id), address: address, startedAt: startedAt, heartbeatAt: heartbeatAt,
                        handlersOwned: Int(owned), alive: alive))
            }
            return replicas
        }
    }

    /// See `HandlerStore.audit(_:)`.
    public func audit(_ handlerIDs: [HandlerID]) async throws -> StoreAudit {
        try await guarded(gated: false) { connection in
            let ids = handlerIDs.map(\.rawValue)
            do {
                return try await audit(ids, tombstones: true, on: connection)
            } catch let error as PSQLError where error.serverInfo?[.sqlState] == "42P01" {
                // undefined_table: a database from before migration 0013 (a restored backup, a
                // standby that had not received it) has no tombstones; the check is still made.
                logger.warning("the database has no purge tombstones (migration 0013), auditing without them")
                return try await audit(ids, tombstones: false, on: connection)
            }
        }
    }

    private func audit(_ ids: [String], tombstones: Bool, on connection: PostgresConnection) async throws -> StoreAudit
    {
        var audit = StoreAudit(highestToken: FencingToken(0), handlers: [:])
        for try await (kind, id, token, lastSequence, system, timeline) in try await connection.checkedQuery(
            Statements.audit(ids: ids, tombstones: tombstones), logger: logger
        ).decode((String, String?, Int64, Int64?, String?, Int32?).self) {
            switch (kind, id, lastSequence) {
            case ("handler", let id?, let lastSequence?):
                audit.handlers[HandlerID(id)] = StoreAudit.Position(
                    token: FencingToken(token), lastSequence: lastSequence)
            case ("purged", let id?, let lastSequence?):
                audit.purged[HandlerID(id)] = StoreAudit.Position(
                    token: FencingToken(token), lastSequence: lastSequence)
            default:
                audit.highestToken = FencingToken(token)
                if let system, let timeline { audit.node = (system, Int(timeline)) }
            }
        }
        return audit
    }

    /// See `HandlerStore.advanceTokens(past:)`.
    public func advanceTokens(past token: FencingToken) async throws {
        try await guarded(gated: false) { connection in
            // A million tokens a statement (about a second); a regression loses seconds of them.
            for _ in 0..<100 {
                var missing: Int64 = 0
                for try await left in try await connection.checkedQuery(
                    Statements.advanceTokens(past: token.rawValue), logger: logger
                ).decode(Int64.self) {
                    missing = left
                }
                if missing == 0 { return }
            }
            throw StoreError.corrupt("the token sequence is more than 10^8 behind \(token)")
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
}

extension PostgresStore {
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
