import Foundation
import LeaseholdEngine
import LeaseholdStore
import Logging
import PostgresNIO
import ServiceLifecycle

/// The cluster's store: PostgreSQL through postgres-nio's `PostgresClient` pool.
///
/// Leases are claimed with `SELECT … FOR UPDATE SKIP LOCKED`, expire by the database clock, and
/// every write for a handler is conditional on the fencing token (see `HandlerStore`). As a
/// `Service` it runs the LISTEN connection that turns other replicas' NOTIFYs into local
/// `signals`; the pool itself must run in the same service group.
public final class PostgresStore: HandlerStore, Service {
    public let client: PostgresClient
    public let signals = StoreSignals()
    /// This process's registration instance: two processes with one replica id never share a
    /// registration (the newest wins; see migration 0004).
    let instance = UUID().uuidString.lowercased()
    let logger: Logger
    let encoder: JSONEncoder
    static let channel = "leasehold"

    public init(client: PostgresClient, logger: Logger) {
        self.client = client
        self.logger = logger
        self.encoder = JSONEncoder()
    }

    // MARK: - Service: the LISTEN loop

    /// Listens for NOTIFYs until shutdown, reconnecting after a dropped connection. After every
    /// (re)subscription all log readers are woken, since notifications may have been missed.
    public func run() async throws {
        await cancelWhenGracefulShutdown {
            var delay = Duration.milliseconds(100)
            while !Task.isCancelled {
                do {
                    try await self.client.withConnection { connection in
                        try await connection.listen(on: Self.channel) { notifications in
                            self.signals.resubscribed()
                            delay = .milliseconds(100)
                            for try await notification in notifications {
                                self.dispatch(notification.payload)
                            }
                        }
                    }
                } catch {
                    if Task.isCancelled { return }
                    self.logger.warning("listen connection lost", metadata: ["error": "\(String(reflecting: error))"])
                }
                do { try await Task.sleep(for: delay) } catch { return }
                delay = min(delay * 2, .seconds(2))
            }
        }
    }

    private func dispatch(_ payload: String) {
        let id = String(payload.dropFirst(2))
        if payload.hasPrefix("l:") {
            signals.logChanged(id)
        } else if payload.hasPrefix("i:") {
            signals.inboxChanged(id)
        }
    }

    // MARK: - Errors

    /// Runs a store operation, turning connection failures into `StoreError.unavailable`.
    func guarded<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as PostgresTransactionError {
            if let inner = error.closureError as? StoreError { throw inner }
            throw map(error.closureError ?? error.commitError ?? error.beginError ?? error)
        } catch let error as StoreError {
            throw error
        } catch {
            throw map(error)
        }
    }

    private func map(_ error: any Error) -> any Error {
        if let error = error as? StoreError { return error }
        guard let psql = error as? PSQLError else { return error }
        if let state = psql.serverInfo?[.sqlState] {
            if state == "23505" { return StoreError.sequenceConflict(HandlerID(psql.serverInfo?[.detail] ?? "?"), -1) }
            // 08: connection exception; 57P: operator intervention (shutdown, terminated backend); 53: resources;
            // and the transient outcomes a retry resolves: serialization failure, deadlock, query
            // cancelled (statement timeout), idle-in-transaction timeout, lock not available.
            if state.hasPrefix("08") || state.hasPrefix("57P") || state.hasPrefix("53") || Self.transientStates.contains(state) {
                return StoreError.unavailable(psql.serverInfo?[.message] ?? state)
            }
            return StoreError.corrupt("\(psql.serverInfo?[.message] ?? "") (SQLSTATE \(state))")
        }
        switch psql.code {
        case .connectionError, .serverClosedConnection, .clientClosedConnection, .poolClosed, .uncleanShutdown,
            .queryCancelled:
            return StoreError.unavailable("\(psql.code)")
        default:
            return StoreError.unavailable(String(reflecting: psql))
        }
    }

    /// SQLSTATEs that mean "try again", not "corrupt": 40001 serialization_failure, 40P01
    /// deadlock_detected, 57014 query_canceled, 25P03 idle_in_transaction_session_timeout,
    /// 55P03 lock_not_available.
    static let transientStates: Set<String> = ["40001", "40P01", "57014", "25P03", "55P03"]

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) * 1e-18
    }

    func json<T: Encodable>(_ value: T) throws -> String {
        String(decoding: try encoder.encode(value), as: UTF8.self)
    }

    // MARK: - Replicas and leases

    public func heartbeat(_ replica: ReplicaID, address: String, ttl: Duration, excluding: [HandlerID]) async throws
        -> [HandlerID: FencingToken]
    {
        try await renew(replica, address: address, ttl: ttl, excluding: excluding, fresh: false)
    }

    public func register(_ replica: ReplicaID, address: String, ttl: Duration) async throws {
        _ = try await renew(replica, address: address, ttl: ttl, excluding: [], fresh: true)
    }

    private func renew(_ replica: ReplicaID, address: String, ttl: Duration, excluding: [HandlerID], fresh: Bool)
        async throws -> [HandlerID: FencingToken]
    {
        try await guarded {
            let query = Statements.renewal(
                replica: replica.rawValue, instance: instance, address: address, ttlSeconds: Self.seconds(ttl),
                excluding: excluding.map(\.rawValue), fresh: fresh)
            var held: [HandlerID: FencingToken] = [:]
            for try await row in try await client.execute(prepared(query, as: Shapes.Renewal.self), logger: logger) {
                let (id, token) = try row.decode((String?, Int64?).self)
                guard let id, let token else { throw StoreError.registrationSuperseded(replica) }
                held[HandlerID(id)] = FencingToken(token)
            }
            return held
        }
    }

    public func deregister(_ replica: ReplicaID) async throws {
        try await guarded {
            _ = try await client.query(Statements.deregister(replica: replica.rawValue, instance: instance), logger: logger)
        }
    }

    public func create(_ handler: NewHandler, owner: ReplicaID) async throws -> ClaimedHandler {
        try await guarded {
            let query = Statements.create(
                id: handler.id.rawValue, workflow: handler.workflowName, runID: handler.runID,
                owner: owner.rawValue, eventID: handler.startEvent.id, event: try json(handler.startEvent.event))
            let rows = try await client.execute(prepared(query, as: Shapes.Create.self), logger: logger)
            var created: HandlerRecord?
            for try await row in rows { created = try Self.record(row) }
            guard let created else { throw StoreError.handlerExists(handler.id) }
            return ClaimedHandler(
                record: created, lease: Lease(handlerID: handler.id, replicaID: owner, token: created.fencingToken),
                state: HandlerState(workflowName: handler.workflowName))
        }
    }

    public func claim(_ replica: ReplicaID, limit: Int, only: HandlerID?) async throws -> [ClaimedHandler] {
        try await guarded {
            let query = Statements.claim(replica: replica.rawValue, instance: instance, limit: limit, only: only?.rawValue)
            let rows = try await client.execute(prepared(query, as: Shapes.Claim.self), logger: logger)
            var claimed: [ClaimedHandler] = []
            let decoder = JSONDecoder()
            for try await row in rows {
                let record = try Self.record(row)
                let snapshot = try row.makeRandomAccess()[15].decode(Data?.self)
                let state =
                    try snapshot.map { try decoder.decode(HandlerState.self, from: $0) }
                    ?? HandlerState(workflowName: record.workflowName)
                claimed.append(ClaimedHandler(
                    record: record, lease: Lease(handlerID: record.id, replicaID: replica, token: record.fencingToken),
                    state: state))
            }
            return claimed
        }
    }

    /// The claim statement exactly as `claim` sends it (benchmarks compare against it raw).
    public func claimStatement(replica: String, limit: Int) -> PostgresQuery {
        Statements.claim(replica: replica, instance: instance, limit: limit, only: nil)
    }

    // MARK: - Fenced writes

    private func checkpointQuery(_ checkpoint: Checkpoint, lease: Lease) throws -> PostgresQuery {
        let state = checkpoint.state
        let terminal = state.status.isFinished ? checkpoint.log.last(where: \.isTerminal) : nil
        return try Statements.checkpoint(
            id: lease.handlerID.rawValue, token: lease.token.rawValue, replica: lease.replicaID.rawValue,
            snapshot: try encoder.encode(state), status: state.status.rawValue, error: state.error,
            result: try terminal.map { try json($0) }, lastSequence: state.nextSequence - 1,
            sequences: checkpoint.log.map(\.sequence), records: try checkpoint.log.map { try json($0) },
            consumed: checkpoint.consumedInbox)
    }

    private func runCheckpoint(_ query: PostgresQuery, on connection: PostgresConnection, lease: Lease) async throws {
        var written = false
        do {
            for try await _ in try await connection.execute(prepared(query, as: Shapes.Checkpoint.self), logger: logger) {
                written = true
            }
        } catch let error as PSQLError where error.serverInfo?[.sqlState] == "23505" {
            throw StoreError.sequenceConflict(lease.handlerID, -1)
        }
        if !written { throw StoreError.leaseLost(lease.handlerID) }
    }

    public func checkpoint(_ checkpoint: Checkpoint, lease: Lease) async throws {
        let query = try checkpointQuery(checkpoint, lease: lease)
        try await guarded {
            try await client.withConnection { connection in
                try await runCheckpoint(query, on: connection, lease: lease)
            }
        }
        // Committed: wake this replica's log readers now rather than when the NOTIFY comes back.
        signals.logChanged(lease.handlerID.rawValue)
    }

    public func hibernate(_ checkpoint: Checkpoint, wakeAt: Date?, lease: Lease) async throws -> Bool {
        let query = try checkpointQuery(checkpoint, lease: lease)
        let id = lease.handlerID.rawValue
        return try await guarded {
            try await client.withTransaction(logger: logger) { connection in
                // Lock first; the count below then runs with a fresh snapshot and sees every inbox
                // row committed before the lock was granted (inbox appends lock the row FOR SHARE).
                var current = false
                for try await valid in try await connection.query(
                    Statements.lockForHibernate(id: id, token: lease.token.rawValue, replica: lease.replicaID.rawValue),
                    logger: logger
                ).decode(Bool?.self) {
                    current = valid ?? false
                }
                guard current else { throw StoreError.leaseLost(lease.handlerID) }
                var pending: Int64 = 0
                for try await count in try await connection.query(
                    Statements.pendingInboxCount(id: id, excluding: checkpoint.consumedInbox), logger: logger
                ).decode(Int64.self) {
                    pending = count
                }
                if pending > 0 { return false }
                try await runCheckpoint(query, on: connection, lease: lease)
                if !checkpoint.state.status.isFinished {
                    try await releaseLease(lease, hibernate: true, wakeAt: wakeAt, on: connection)
                }
                return true
            }
        }
    }

    private func releaseLease(_ lease: Lease, hibernate: Bool, wakeAt: Date?, on connection: PostgresConnection) async throws {
        let rows = try await connection.query(
            Statements.releaseLease(
                id: lease.handlerID.rawValue, token: lease.token.rawValue, replica: lease.replicaID.rawValue,
                hibernate: hibernate, wakeAt: wakeAt),
            logger: logger)
        var released = false
        for try await _ in rows.decode(String.self) { released = true }
        if !released { throw StoreError.leaseLost(lease.handlerID) }
    }

    public func release(_ checkpoint: Checkpoint?, lease: Lease) async throws {
        let query = try checkpoint.map { try checkpointQuery($0, lease: lease) }
        try await guarded {
            try await client.withTransaction(logger: logger) { connection in
                if let query { try await runCheckpoint(query, on: connection, lease: lease) }
                if checkpoint?.state.status.isFinished != true {
                    try await releaseLease(lease, hibernate: false, wakeAt: nil, on: connection)
                }
            }
        }
    }

    // MARK: - Inbox

    public func appendInbox(_ handlerID: HandlerID, _ event: InboxEvent) async throws -> InboxReceipt {
        let id = handlerID.rawValue
        let payload = try json(event.event)
        return try await guarded {
            var found: (String, String?, Bool, Bool)?
            let query = Statements.appendInbox(id: id, eventID: event.id, event: payload, notification: "i:" + id)
            for try await row in try await client.execute(prepared(query, as: Shapes.AppendInbox.self), logger: logger) {
                found = try row.decode((String, String?, Bool, Bool).self)
            }
            guard let (status, owner, hibernated, inserted) = found else { throw StoreError.handlerNotFound(handlerID) }
            guard status == HandlerStatus.running.rawValue else { throw StoreError.handlerFinished(handlerID) }
            return InboxReceipt(owner: owner.map { ReplicaID($0) }, hibernated: hibernated, inserted: inserted)
        }
    }

    public func pendingInbox(of handlerIDs: [HandlerID]) async throws -> [HandlerID: [InboxEvent]] {
        guard !handlerIDs.isEmpty else { return [:] }
        return try await guarded {
            let decoder = JSONDecoder()
            var events: [HandlerID: [InboxEvent]] = [:]
            let query = Statements.pendingInboxOf(ids: handlerIDs.map(\.rawValue))
            for try await (handlerID, eventID, text) in try await client.query(query, logger: logger).decode(
                (String, String, String).self)
            {
                let event = try decoder.decode(AnyEvent.self, from: Data(text.utf8))
                events[HandlerID(handlerID), default: []].append(InboxEvent(id: eventID, event: event))
            }
            return events
        }
    }

    public func pendingInbox(_ handlerID: HandlerID) async throws -> [InboxEvent] {
        try await guarded {
            let decoder = JSONDecoder()
            var events: [InboxEvent] = []
            let query = Statements.pendingInbox(id: handlerID.rawValue)
            for try await row in try await client.execute(prepared(query, as: Shapes.PendingInbox.self), logger: logger) {
                let (eventID, text) = try row.decode((String, String).self)
                events.append(InboxEvent(id: eventID, event: try decoder.decode(AnyEvent.self, from: Data(text.utf8))))
            }
            return events
        }
    }

    // MARK: - Cancel and delete

    public func cancel(_ handlerID: HandlerID) async throws -> CancelOutcome {
        let id = handlerID.rawValue
        let cancelled = try await guarded {
            try await client.withTransaction(logger: logger) { connection -> Bool in
                var found: (String, Int64)?
                for try await row in try await connection.query(Statements.lockForCancel(id: id), logger: logger)
                    .decode((String, Int64).self)
                {
                    found = row
                }
                guard let (status, last) = found else { throw StoreError.handlerNotFound(handlerID) }
                guard status == HandlerStatus.running.rawValue else { return false }
                let terminal = LogRecord.cancelled(sequence: last + 1)
                let text = try json(terminal)
                try await connection.query(Statements.appendLog(id: id, sequence: last + 1, record: text), logger: logger)
                try await connection.query(
                    Statements.markCancelled(id: id, sequence: last + 1, result: text), logger: logger)
                _ = try await connection.query(Statements.notify("l:" + id), logger: logger).collect()
                _ = try await connection.query(Statements.notify("i:" + id), logger: logger).collect()
                return true
            }
        }
        guard let record = try await handler(handlerID) else { throw StoreError.handlerNotFound(handlerID) }
        return cancelled ? .cancelled(record) : .alreadyFinished(record)
    }

    public func delete(_ handlerID: HandlerID) async throws -> Bool {
        try await guarded {
            var deleted = false
            for try await _ in try await client.query(Statements.delete(id: handlerID.rawValue), logger: logger)
                .decode(String.self)
            {
                deleted = true
            }
            if deleted {
                try await client.query(Statements.notify("l:" + handlerID.rawValue), logger: logger)
                try await client.query(Statements.notify("i:" + handlerID.rawValue), logger: logger)
            }
            return deleted
        }
    }

    // MARK: - Reads

    static func record(_ row: PostgresRow) throws -> HandlerRecord {
        let (id, workflow, runID, status, error, result, startedAt, updatedAt, completedAt) = try row.decode(
            (String, String, String, String, String?, String?, Date, Date, Date?).self)
        let cells = row.makeRandomAccess()
        let owner = try cells[9].decode(String?.self)
        let leaseExpiresAt = try cells[10].decode(Date?.self)
        let token = try cells[11].decode(Int64.self)
        let hibernated = try cells[12].decode(Bool.self)
        let lastSequence = try cells[13].decode(Int64.self)
        let wakeAt = try cells[14].decode(Date?.self)
        return HandlerRecord(
            id: HandlerID(id), workflowName: workflow, runID: runID,
            status: HandlerStatus(rawValue: status) ?? .failed, error: error,
            result: try result.map { try JSONDecoder().decode(LogRecord.self, from: Data($0.utf8)) },
            startedAt: startedAt, updatedAt: updatedAt, completedAt: completedAt, owner: owner.map { ReplicaID($0) },
            leaseExpiresAt: leaseExpiresAt, fencingToken: FencingToken(token), hibernated: hibernated,
            lastSequence: lastSequence, wakeAt: wakeAt)
    }

    public func handler(_ handlerID: HandlerID) async throws -> HandlerRecord? {
        try await guarded {
            var found: HandlerRecord?
            let query = Statements.handler(id: handlerID.rawValue)
            for try await row in try await client.execute(prepared(query, as: Shapes.Handler.self), logger: logger) {
                found = try Self.record(row)
            }
            return found
        }
    }

    public func handlers(_ filter: HandlerFilter) async throws -> [HandlerRecord] {
        try await guarded {
            var records: [HandlerRecord] = []
            for try await row in try await client.query(
                Statements.handlers(
                    statuses: filter.statuses.map(\.rawValue), workflows: filter.workflows, limit: 10_000),
                logger: logger)
            {
                records.append(try Self.record(row))
            }
            return records
        }
    }

    public func events(_ handlerID: HandlerID, after sequence: Int64, limit: Int) async throws -> [LogRecord] {
        try await guarded {
            let decoder = JSONDecoder()
            var records: [LogRecord] = []
            let query = Statements.events(id: handlerID.rawValue, after: sequence, limit: limit)
            for try await row in try await client.execute(prepared(query, as: Shapes.Events.self), logger: logger) {
                let text = try row.decode(String.self)
                records.append(try decoder.decode(LogRecord.self, from: Data(text.utf8)))
            }
            return records
        }
    }

    public func replicas(aliveWithin ttl: Duration) async throws -> [ReplicaRecord] {
        try await guarded {
            var replicas: [ReplicaRecord] = []
            for try await (id, address, startedAt, heartbeatAt, owned, alive) in try await client.query(
                Statements.replicas(ttlSeconds: Self.seconds(ttl)), logger: logger
            ).decode((String, String, Date, Date, Int64, Bool).self) {
                replicas.append(ReplicaRecord(
                    id: ReplicaID(id), address: address, startedAt: startedAt, heartbeatAt: heartbeatAt,
                    handlersOwned: Int(owned), alive: alive))
            }
            return replicas
        }
    }

    public func counts() async throws -> HandlerCounts {
        try await guarded {
            var counts = HandlerCounts()
            for try await (status, hibernated, count, expired) in try await client.query(Statements.counts(), logger: logger)
                .decode((String, Bool, Int64, Int64).self)
            {
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
