import Foundation
import LeaseholdEngine
import LeaseholdKit
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
    public let signals: StoreSignals
    /// The replica's clock: the request watchdog, group commit's linger and the LISTEN probe
    /// measure on it.
    let clock: ReplicaClock
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
    let watchdog: RequestWatchdog
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
    /// - Parameter clock: the replica's clock.
    public init(
        client: PostgresClient, logger: Logger, listenProbe: Duration? = .seconds(1),
        requestTimeout: Duration? = .seconds(30), groupCommit: GroupCommitSettings? = nil,
        clock: ReplicaClock = .system
    ) {
        self.clock = clock
        self.signals = StoreSignals(clock: clock)
        self.watchdog = RequestWatchdog(clock: clock)
        self.groupCommit = groupCommit.map { GroupCommit(settings: $0, clock: clock) }
        self.client = client
        self.logger = logger
        self.encoder = JSONEncoder()
        self.listenProbe = listenProbe
        self.requestTimeout = requestTimeout
    }
}
