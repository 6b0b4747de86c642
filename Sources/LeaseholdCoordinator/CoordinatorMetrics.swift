import CoreMetrics
import LeaseholdKit
import Metrics

/// The coordinator's metrics (Prometheus names; no per-handler labels).
struct CoordinatorMetrics: Sendable {
    let leasesHeld = Gauge(label: "leasehold_leases_held")
    let claims = Counter(label: "leasehold_claims_total")
    let failovers = Counter(label: "leasehold_failovers_total")
    let renewLatency = Timer(label: "leasehold_renew_duration_seconds")
    let renewFailures = Counter(label: "leasehold_renew_failures_total")
    let selfFences = Counter(label: "leasehold_self_fences_total")
    let clockSteps = Counter(label: "leasehold_clock_steps_total")
    let fencedWrites = Counter(label: "leasehold_fenced_writes_rejected_total")
    let hibernations = Counter(label: "leasehold_hibernations_total")
    let reloads = Counter(label: "leasehold_reloads_total")
    let reloadLatency = Timer(label: "leasehold_reload_duration_seconds")
    let handlersStarted = Counter(label: "leasehold_handlers_started_total")
    let handlersFinished = Counter(label: "leasehold_handlers_finished_total")
    let eventsAppended = Counter(label: "leasehold_events_appended_total")
    let inboxEvents = Counter(label: "leasehold_inbox_events_total")
    let checkpoints = Counter(label: "leasehold_checkpoints_total")
    let handoffs = Counter(label: "leasehold_handoffs_total")
    let handlersPurged = Counter(label: "leasehold_handlers_purged_total")
    /// The database node of the last renewal (see `LeaseKeeper+FailoverCheck`).
    let databaseTimeline = Gauge(label: "leasehold_database_timeline")
    /// Synchronous standbys of that node; -1 when the role may not see them (needs `pg_monitor`).
    let synchronousStandbys = Gauge(label: "leasehold_database_synchronous_standbys")
    let databaseFailovers = Counter(label: "leasehold_database_failovers_total")
    let failedChecks = Counter(label: "leasehold_failover_checks_failed_total")
    let databaseReplaced = Counter(label: "leasehold_database_replaced_total")
    /// Failover checks of an unchanged database node after a refused write (`LeaseKeeper+FailoverCheck`).
    let checksOnSuspicion = Counter(label: "leasehold_failover_checks_on_suspicion_total")
    /// Handlers launched with their steps isolated: a replica died of a fault during one of their steps.
    let suspectsLaunched = Counter(label: "leasehold_suspects_launched_total")
    /// Handlers set aside: a step of theirs ended its isolated process too.
    let quarantines = Counter(label: "leasehold_quarantines_total")
    /// Quarantined handlers an operator released.
    let quarantineReleases = Counter(label: "leasehold_quarantine_releases_total")
}

extension Metrics.Timer {
    /// Records the time from `start` to now, both read from `clock`.
    func recordInterval(since start: Duration, clock: ReplicaClock) {
        let elapsed = clock.now - start
        recordNanoseconds(elapsed.wholeNanoseconds)
    }
}
