import Foundation
import LeaseholdEngine
import LeaseholdStore
import Logging
import PostgresNIO
import ServiceLifecycle
import Synchronization

/// The cluster's store: PostgreSQL through postgres-nio's `PostgresClient` pool.
///
/// Leases are claimed with `SELECT … FOR UPDATE SKIP LOCKED`, expire by the database clock, and
/// every write for a handler is conditional on the fencing token (see `HandlerStore`). As a
/// `Service` it runs the LISTEN connection that turns other replicas' NOTIFYs into local
/// `signals`; the pool itself must run in the same service group.
public final class PostgresStore: HandlerStore, Service {
    /// The connection pool every statement runs on (it must run in the same service group).
    public let client: PostgresClient
    /// See `HandlerStore.signals`: fed by this process and, through LISTEN, by other replicas.
    public let signals = StoreSignals()
    let nodeGate = NodeGate()
    /// This process's registration instance: two processes with one replica id never share a
    /// registration (the newest wins; see migration 0004).
    let instance = UUID().uuidString.lowercased()
    let logger: Logger
    let encoder: JSONEncoder
    /// How often the LISTEN connection is proved alive (nil: never); see `run()`.
    let listenProbe: Duration?
    let listening = ListenState()
    /// How long a statement may go unanswered before its connection is closed (nil: no limit); see
    /// `RequestWatchdog`.
    let requestTimeout: Duration?
    let watchdog = RequestWatchdog()
    /// Shares commits between the writes of many handlers (nil: every write commits alone).
    let groupCommit: GroupCommit?

    /// The NOTIFY channel and its payloads: `l:<id>` a handler's log grew (or it was cancelled or
    /// purged), `i:<id>` its inbox got an event, `p:<instance>:<n>` this process's liveness probe.
    enum Notification {
        static let channel = "leasehold"
        static let log = "l:"
        static let inbox = "i:"
        static let probe = "p:"
    }

    /// - Parameter listenProbe: the period of the LISTEN liveness probe (a replica passes its
    ///   renewal period); a connection that does not hear a probe within three periods is replaced.
    /// - Parameter requestTimeout: a request unanswered this long has its connection closed (a
    ///   replica passes two lease TTLs: by then the server has given up on a silent session).
    /// - Parameter groupCommit: how creations and checkpoints share commits while the store's
    ///   service runs (nil: each commits alone).
    public init(
        client: PostgresClient, logger: Logger, listenProbe: Duration? = .seconds(1),
        requestTimeout: Duration? = .seconds(30), groupCommit: GroupCommitSettings? = nil
    ) {
        self.groupCommit = groupCommit.map { GroupCommit(settings: $0) }
        self.client = client
        self.logger = logger
        self.encoder = JSONEncoder()
        self.listenProbe = listenProbe
        self.requestTimeout = requestTimeout
    }

    // MARK: - Replicas and leases

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
                replica: replica.rawValue, instance: instance, address: address, ttlSeconds: Self.seconds(ttl),
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
