import CoreMetrics
import LeaseholdKit
import LeaseholdRuntime
import LeaseholdStore
import Logging
import Synchronization

/// The database never silently goes back in time.
///
/// Fencing rests on the database remembering every token it granted and every write it
/// acknowledged. A failover to a synchronous standby keeps that promise; one to an asynchronous
/// standby that lagged, or a restore from a backup, may not: tokens would be handed out again and
/// acknowledged events vanish. Each renewal names the node that answered (system identifier and
/// WAL timeline, `leasehold_database_node()`); this part acts when they change:
///
/// - another system identifier is another database: every handler here stops, the token sequence
///   there is moved past every token seen here and the replica registers anew;
/// - another timeline is a failover (or a point-in-time recovery, or a restored backup): before
///   acting on anything that node says, the replica reads back what it was told within the last
///   `acknowledgementWindow` — each handler's token and last durable sequence, kept whether the
///   handler still runs here or not, and the highest token it was ever granted — from that same
///   node. All there: work goes on. Anything missing: the database went back in time; every
///   handler here stops, the token sequence is moved past every token this replica saw, the
///   replica renews nothing for one TTL (its leases lapse, and every other replica checks at its
///   next renewal), then registers anew; logged as critical, counted in
///   `leasehold_failover_checks_failed_total`.
///
/// While a check cannot be made (the failover check fails, or runs on another node than the one it
/// checks), the replica sends no renewal: its leases lapse and other replicas take its handlers,
/// rather than this replica keeping them alive without acting on what it hears.
/// Evidence that the database lost writes can also come without another node answering: a write
/// refused (its lease gone, its log not continuing the row's), or a reserved token the sequence is
/// not past. Each makes the database a suspect: the next renewal is sent at once and checks the
/// node it meets as if it were a new one, and what a refused write concerned is forgotten only
/// after a failover check that started after the refusal passed (`forgetAfterCheck`). Suspicions raised
/// together share one failover check (one runs at a time; one pending covers every suspicion raised
/// before it starts). What a failover check costs: one statement over every remembered position
/// (`acknowledgementLimit`, 100,000 at most; measured in `PostgresStoreTests.failoverCheckOfManyPositions`).
///
/// Until a node is checked, nothing is written there: the store runs no operation on a connection
/// to a node this replica has not trusted (`HandlerStore.trust`, the Postgres store's
/// `NodeGate`) and signals it, which sends a renewal at once (`runDatabaseMoveChecks`). And a
/// checkpoint only writes over the last sequence its writer saw durable, so even a write that a
/// gate cannot stop (a node that does not tell its identity) cannot paper over a lost one.
///
/// When a check starts and what its answer means are `LeaseMachine`'s decisions
/// (`LeaseMachine+FailoverCheck.swift`); this extension performs them.
extension LeaseKeeper {
    /// The database may have lost writes (see above): the next renewal checks it, and is sent now.
    func suspectDatabase() {
        state.withLock { $0.suspect() }
        store.signals.databaseMoved()
    }

    /// What this replica was told of the handlers of `leases`, whose writes were refused, is
    /// forgotten once a failover check that started after this call passed (never, if one finds the
    /// database went back in time: then everything is). Raises the suspicion that starts one.
    func forgetAfterCheck(_ leases: [Lease]) {
        if state.withLock({ $0.refused(leases) }) { store.signals.databaseMoved() }
    }

    /// Runs the renewal that checks a node an operation met before any renewal did (see `NodeGate`),
    /// or a suspected database, at once rather than at the next heartbeat.
    /// At most one such renewal per tenth of the heartbeat: writes refused by the gate keep
    /// signalling while a check cannot be made (the failover check failing), and each would otherwise send
    /// a failover check at once after the last.
    func runDatabaseMoveChecks(host: HandlerHost) async {
        for await _ in store.signals.databaseMoves {
            if Task.isCancelled || isSuperseded { return }
            await renewOnce(host: host)
            do { try await clock.sleep(for: configuration.heartbeatInterval / 10) } catch { return }
        }
    }

    /// Performs `check` (begun by the machine) to its end.
    /// - Returns: true when what the node said must not be acted on (checked and started over,
    ///   or not checked yet).
    func perform(_ check: LeaseMachine.Check, host: HandlerHost) async -> Bool {
        let refused = await run(check, host: host)
        state.withLock { $0.checkEnded(check.number, refused: refused) }
        signals.passed(.databaseCheck)
        return refused
    }

    private func run(_ check: LeaseMachine.Check, host: HandlerHost) async -> Bool {
        let node = check.node
        switch state.withLock({ $0.planCheck(check, at: clock.now) }) {
        case .anotherDatabase(let highest):
            metrics.databaseReplaced.increment()
            logger.error(
                "another database answered (system identifier changed), stopping every handler and registering anew",
                metadata: [
                    LogKeys.database: "\(check.verified.systemIdentifier) -> \(node.systemIdentifier)",
                    LogKeys.count: "\(host.liveHandlers.count)",
                ])
            host.fence(host.liveHandlers, reason: "another database")
            await startOver(host: host, reason: "another database", waitOneTTL: false, tokensPast: highest)
            store.trust(state.withLock { $0.replaced(by: node, at: clock.now) })
            return true
        case .read(let positions, let highest):
            let answer: FailoverCheckAnswer?
            do {
                answer = try await store.failoverCheck(Array(positions.keys))
            } catch {
                logger.warning(
                    "the database failed over; checking what it kept failed, renewing nothing until it succeeds",
                    metadata: [LogKeys.error: "\(error)"])
                answer = nil
            }
            let outcome = state.withLock {
                $0.checkAnswered(check, positions: positions, highest: highest, answer: answer)
            }
            await perform(outcome, of: check, host: host)
            return outcome.refusesRenewal
        }
    }

    /// Logs, counts and carries out a check's outcome.
    private func perform(_ outcome: LeaseMachine.CheckOutcome, of check: LeaseMachine.Check, host: HandlerHost) async {
        let node = check.node
        let moved: String
        switch outcome {
        case .unreadable: return
        case .answeredElsewhere(let timeline, _):
            // A pool still holding a connection to the old primary (retry: no renewal until the
            // two agree), or yet another failover since (that newer node is checked next).
            logger.warning(
                "the database check was answered by another node, checking again",
                metadata: [LogKeys.database: "timeline \(timeline), expected \(node.timeline)"])
            return
        case .kept(let failover, let count):
            moved = Self.describe(check, failover: failover)
            if failover {
                metrics.databaseFailovers.increment()
                logger.notice(
                    "the database failed over and kept everything this replica had acknowledged",
                    metadata: [LogKeys.database: "\(moved)", LogKeys.count: "\(count)"])
            } else {
                metrics.checksOnSuspicion.increment()
                logger.info(
                    "the database kept everything this replica had acknowledged",
                    metadata: [LogKeys.database: "\(moved)", LogKeys.count: "\(count)"])
            }
            store.trust(node)
        case .lost(let missing, let failover, let highest):
            moved = Self.describe(check, failover: failover)
            metrics.failedChecks.increment()
            if failover { metrics.databaseFailovers.increment() } else { metrics.checksOnSuspicion.increment() }
            host.fence(host.liveHandlers, reason: "failover check failed: the database lost acknowledged writes")
            logger.critical(
                "failover check failed: the database lost writes it had acknowledged (it went back in time); voiding every lease here, waiting one lease TTL and registering anew",
                metadata: [
                    LogKeys.database: "\(moved)", LogKeys.count: "\(missing.count)",
                    LogKeys.detail: "\(missing.prefix(20).joined(separator: "; "))",
                ])
            await startOver(host: host, reason: "failover check failed", waitOneTTL: true, tokensPast: highest)
            store.trust(state.withLock { $0.restartedAfterLoss(on: node, at: clock.now) })
        }
    }

    private static func describe(_ check: LeaseMachine.Check, failover: Bool) -> String {
        failover
            ? "timeline \(check.verified.timeline) -> \(check.node.timeline) at \(check.node.address)"
            : "timeline \(check.node.timeline) at \(check.node.address), checked after a refused write"
    }

    /// How long `startOver` tries to move the token sequence before it registers anyway.
    static let tokenMoveLimit = Duration.seconds(10)

    /// After the machine stopped everything: moves the token sequence past `token`, optionally
    /// waits one TTL without renewing, then registers anew (voiding whatever this replica id still
    /// held).
    private func startOver(host: HandlerHost, reason: String, waitOneTTL: Bool, tokensPast token: FencingToken) async {
        defer { state.withLock { $0.startedOver() } }
        do {
            // Bounded in time (10 s, whatever the backoff's constants): a role that may not move
            // the sequence must not keep the replica out for good.
            var backoff = Backoff(.background)
            let deadline = clock.now + Self.tokenMoveLimit
            var attempt = 0
            while true {
                attempt += 1
                do {
                    try await store.advanceTokens(past: token)
                    // A reservation that raced the fence came from the database before the move.
                    discardReservedTokens()
                    break
                } catch {
                    logger.error(
                        "moving the token sequence failed",
                        metadata: [LogKeys.error: "\(error)", LogKeys.count: "\(attempt)"])
                    guard try await backoff.wait(on: clock, before: deadline) else { break }
                }
            }
            if waitOneTTL { try await clock.sleep(for: configuration.leaseTTL) }
            try await register()
        } catch {
            return  // cancelled: shutting down, nothing more to hold
        }
        // Anything launched between the fence and the registration ran under a voided lease.
        host.fence(host.liveHandlers.filter { $0.claimedAt < clock.now }, reason: reason)
    }

    // MARK: - What this replica was told

    /// A lease granted to this replica (created or claimed), with the last sequence it carried.
    func granted(_ lease: Lease, lastSequence: Int64) {
        state.withLock { $0.granted(lease, lastSequence: lastSequence, at: clock.now) }
    }

    /// A checkpoint of `lease` committed up to `lastSequence`.
    func acknowledged(_ lease: Lease, lastSequence: Int64) {
        state.withLock { $0.acknowledge(lease, lastSequence: lastSequence, at: clock.now) }
    }

    /// The handler moved on without this replica (its lease lost, a write rejected, a purge):
    /// what the database says of it from now on is not this replica's to check.
    func forget(_ lease: Lease) {
        state.withLock { $0.acknowledged.forget(lease.handlerID, upTo: lease.token) }
    }

    /// Drops what was acknowledged longer ago than `acknowledgementWindow` (give or take one of its
    /// generations), and the oldest beyond `acknowledgementLimit`; hands the freed memory back to
    /// the system when that was much.
    func pruneAcknowledged() {
        // The clock is read under the lock: a time read before a wait for it could start a
        // generation in the past and drop what it then holds early.
        let dropped = state.withLock { $0.acknowledged.prune(at: clock.now) }
        if dropped >= MemoryTrim.threshold { MemoryTrim.release() }
    }

    /// The database node of the last renewal, and how often its history was checked.
    var database: (node: DatabaseNode?, failovers: Int, failedChecks: Int) {
        state.withLock { ($0.node, $0.databaseFailovers, $0.failedChecks) }
    }

    /// Failover checks of an unchanged node after a refused write (or a reserved token it was not past).
    var checksOnSuspicion: Int { state.withLock { $0.checksOnSuspicion } }
}
