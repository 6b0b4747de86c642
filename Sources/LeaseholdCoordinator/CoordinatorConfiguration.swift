import LeaseholdRuntime
import LeaseholdStore

/// How a replica's coordinator behaves.
public struct CoordinatorConfiguration: Sendable {
    /// This replica's id, unique in the cluster.
    public var replicaID: ReplicaID
    /// How other replicas and operators reach this replica (shown in the cluster view).
    public var address: String
    /// How long a lease lasts without renewal. Renewed every `leaseTTL / 3`.
    public var leaseTTL: Duration
    /// Idle time after which a waiting handler is hibernated; nil disables hibernation.
    public var idleTimeout: Duration?
    /// How often the claim loop looks for orphaned and due handlers.
    public var claimInterval: Duration
    /// At most this many handlers taken by one claim.
    public var claimBatch: Int
    /// How many step runs of one handler may execute at once; more wait in order.
    public var maxConcurrentSteps: Int
    /// How long a handler's checkpoint of a change no client sees may wait, while steps run, for
    /// the next change (see `HandlerRuntime`); zero writes every change at once.
    public var checkpointCoalescing: Duration
    /// Test-only: with false the replica never stops its handlers on its own, so that tests can
    /// show the fencing token alone keeps a stale replica out.
    public var selfFencing: Bool
    /// Test-only (the simulator's mutation table): with false a write stuck over half a TTL no
    /// longer takes its lease out of renewal.
    package var stuckWriteFence = true
    /// Test-only (the simulator's mutation table): with false live handlers' inboxes are not
    /// reconciled every renewal period (an event whose notification was lost waits for good).
    package var inboxReconciliation = true
    /// Test-only (the same): with false a database node that changed is trusted unchecked.
    package var failoverCheck = true
    /// Finished handlers older than this are deleted with their log and inbox; nil keeps them.
    public var retention: Duration?
    /// Where a suspect handler's steps run (a replica died of a fault during one of them): a
    /// process of their own. Nil runs them in this process (a single process with the in-memory
    /// store, where there is no next replica to protect).
    public var stepIsolation: (any StepIsolation)?

    /// A configuration; `claimInterval` defaults to a tenth of `leaseTTL`, at most 250 ms.
    public init(
        replicaID: ReplicaID,
        address: String,
        leaseTTL: Duration = .seconds(5),
        idleTimeout: Duration? = .seconds(60),
        claimInterval: Duration? = nil,
        claimBatch: Int = 100,
        maxConcurrentSteps: Int = 16,
        selfFencing: Bool = true,
        retention: Duration? = nil,
        checkpointCoalescing: Duration = .milliseconds(100),
        stepIsolation: (any StepIsolation)? = nil
    ) {
        self.stepIsolation = stepIsolation
        self.checkpointCoalescing = checkpointCoalescing
        self.retention = retention
        self.replicaID = replicaID
        self.address = address
        self.leaseTTL = leaseTTL
        self.idleTimeout = idleTimeout
        self.claimInterval = claimInterval ?? min(leaseTTL / 10, .milliseconds(250))
        self.claimBatch = claimBatch
        self.maxConcurrentSteps = maxConcurrentSteps
        self.selfFencing = selfFencing
    }

    /// Renewal period: three tries per TTL.
    public var heartbeatInterval: Duration { leaseTTL / 3 }

    /// A replica stops its handlers itself when it has not renewed for this long (TTL minus a
    /// margin for clock-rate differences and the statement's own latency).
    public var selfFenceAfter: Duration { leaseTTL - max(leaseTTL / 5, .milliseconds(200)) }

    /// How far the database's clock may move apart from the replica's monotonic clock between two
    /// renewals (beyond both renewals' round trips) before it counts as a clock step: the self-
    /// fencing margin, since a step larger than that lets another replica claim a lease before
    /// this one fences itself.
    public var clockStepMargin: Duration { max(leaseTTL / 5, .milliseconds(200)) }

    /// How long the replica remembers what the database acknowledged to it, for the check after a
    /// database failover: ten minutes (far longer than any failover, which is what a standby may
    /// lag), and never as long as the retention (a purged handler is not a lost one).
    public var acknowledgementWindow: Duration {
        guard let retention else { return .seconds(600) }
        return min(.seconds(600), retention / 2)
    }

    /// At most this many handlers' acknowledged positions are remembered (the oldest go first).
    public static let acknowledgementLimit = 100_000
}
