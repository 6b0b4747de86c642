import LeaseholdKit
import LeaseholdStore
import Logging

/// What every part of a replica's coordinator shares, passed as one value instead of five
/// positional collaborators: its configuration, clock, logger (carrying the replica id),
/// metrics and signals. The coordinator makes it once; each part keeps it as `context`.
struct ReplicaContext: Sendable {
    /// How this replica behaves.
    let configuration: CoordinatorConfiguration
    /// Monotonic and wall time (a manual clock in tests).
    let clock: ReplicaClock
    /// The replica's logger.
    let logger: Logger
    /// The replica's metrics.
    let metrics: CoordinatorMetrics
    /// Awaitable passes of the replica's loops.
    let signals: CoordinatorSignals
    /// Random ids (server-chosen handler ids, run ids): seeded in the simulator.
    let ids: IDSource
}

/// A part of the coordinator: reads what it shares through its `context`.
protocol ReplicaPart {
    /// The replica's shared configuration, clock, logger, metrics and signals.
    var context: ReplicaContext { get }
}

extension ReplicaPart {
    var configuration: CoordinatorConfiguration { context.configuration }
    var clock: ReplicaClock { context.clock }
    var logger: Logger { context.logger }
    var metrics: CoordinatorMetrics { context.metrics }
    var signals: CoordinatorSignals { context.signals }
    var ids: IDSource { context.ids }
    var replicaID: ReplicaID { context.configuration.replicaID }
}
