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
extension LeaseKeeper {
    /// Called with the node that answered a renewal.
    /// - Returns: true when that renewal must not be acted on.
    func databaseMoved(_ node: DatabaseNode, host: HandlerHost) async -> Bool {
        enum Verdict {
            case same, busy
            case check(DatabaseNode)
        }
        let verdict = state.withLock { state -> Verdict in
            state.node = node
            guard let verified = state.verifiedNode else {
                state.verifiedNode = node
                store.trust(node)
                return .same
            }
            let same = verified.systemIdentifier == node.systemIdentifier && verified.timeline == node.timeline
            // One check at a time. While a node change is checked, renewals answered meanwhile
            // prove nothing; while the verified node is checked on a suspicion (which takes
            // seconds at 100,000 positions), its renewals count as before the suspicion.
            if state.checkingDatabase { return same && state.pendingNode == nil ? .same : .busy }
            if same {
                guard state.suspected else { return .same }
                Self.beginCheck(&state)
                return .check(verified)
            }
            Self.beginCheck(&state)
            state.pendingNode = node
            // Tokens reserved from the node before are not used on this one, whatever the check finds.
            Self.discardReservedTokens(&state)
            return .check(verified)
        }
        metrics.databaseTimeline.record(node.timeline)
        metrics.synchronousStandbys.record(node.synchronousStandbys ?? -1)
        switch verdict {
        case .same: return false
        case .busy: return true
        case .check(let verified):
            return await checkAndRecord(node, against: verified, host: host)
        }
    }

    /// A registration answered by `node`. The first node this replica meets is trusted at once
    /// (it was told nothing yet, and claims start after the registration); another node than the
    /// verified one is checked before the next renewal, as one a renewal met.
    func registered(on node: DatabaseNode) {
        state.withLock { state in
            state.node = node
            guard let verified = state.verifiedNode else {
                state.verifiedNode = node
                store.trust(node)
                return
            }
            if verified.systemIdentifier != node.systemIdentifier || verified.timeline != node.timeline {
                state.pendingNode = node
                Self.discardReservedTokens(&state)
            }
        }
    }

    /// Checks a node whose earlier check failed, before the next renewal is sent.
    /// - Returns: true when no renewal may be sent now.
    func recheckPendingDatabase(host: HandlerHost) async -> Bool {
        let pending = state.withLock { state -> (DatabaseNode, DatabaseNode)? in
            guard let node = state.pendingNode, let verified = state.verifiedNode, !state.checkingDatabase else {
                return nil
            }
            Self.beginCheck(&state)
            return (node, verified)
        }
        // A check of a node change in flight: no renewal meanwhile. (A failover check of the verified node
        // on a suspicion does not hold renewals up.)
        guard let (node, verified) = pending else {
            return state.withLock { $0.checkingDatabase && $0.pendingNode != nil }
        }
        return await checkAndRecord(node, against: verified, host: host)
    }

    /// The database may have lost writes (see above): the next renewal checks it, and is sent now.
    func suspectDatabase() {
        state.withLock { $0.suspected = true }
        store.signals.databaseMoved()
    }

    /// What this replica was told of the handlers of `leases`, whose writes were refused, is
    /// forgotten once a failover check that started after this call passed (never, if one finds the
    /// database went back in time: then everything is). Raises the suspicion that starts one.
    func forgetAfterCheck(_ leases: [Lease]) {
        guard !leases.isEmpty else { return }
        let checked = state.withLock { state -> Bool in
            // A database that does not tell its node (the in-memory store, a managed service
            // refusing the functions) is never checked: forgotten now, as before any failover check.
            guard state.verifiedNode != nil else {
                for lease in leases { state.acknowledged.forget(lease.handlerID, upTo: lease.token) }
                return false
            }
            let check = state.checksStarted + 1
            state.forgetAfterCheck.append(contentsOf: leases.map { ($0, check) })
            // Bounded: a forget dropped only keeps a position longer (the database only moves
            // a handler forward from what it acknowledged; a kept one costs a few bytes).
            let excess = state.forgetAfterCheck.count - CoordinatorConfiguration.acknowledgementLimit
            if excess > 0 { state.forgetAfterCheck.removeFirst(excess) }
            state.suspected = true
            return true
        }
        if checked { store.signals.databaseMoved() }
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

    private static func beginCheck(_ state: inout State) {
        state.checkingDatabase = true
        state.suspected = false
        state.checksStarted += 1
    }

    /// `check`, then the bookkeeping every check shares: one at a time, numbered, awaited.
    private func checkAndRecord(_ node: DatabaseNode, against verified: DatabaseNode, host: HandlerHost) async
        -> Bool
    {
        let number = state.withLock { $0.checksStarted }
        let refused = await check(node, against: verified, host: host)
        state.withLock { state in
            state.checkingDatabase = false
            guard !refused else { return }
            // It found nothing lost: the refusals raised before it started were what they seemed.
            var kept: [(Lease, Int)] = []
            for (lease, check) in state.forgetAfterCheck {
                if check <= number {
                    state.acknowledged.forget(lease.handlerID, upTo: lease.token)
                } else {
                    kept.append((lease, check))
                }
            }
            state.forgetAfterCheck = kept
        }
        signals.passed(.databaseCheck)
        return refused
    }

    /// Long (about 100 lines) because it is one decision read top to bottom: another database,
    /// a failover check that failed or ran elsewhere, nothing lost, or a regression, each with its state
    /// change, log line and metric; what is lost is computed apart (`losses`).
    /// - Returns: true when what the node said must not be acted on (checked and started over,
    ///   or not checked yet).
    private func check(_ node: DatabaseNode, against verified: DatabaseNode, host: HandlerHost) async -> Bool {
        if verified.systemIdentifier != node.systemIdentifier {
            metrics.databaseReplaced.increment()
            logger.error(
                "another database answered (system identifier changed), stopping every handler and registering anew",
                metadata: [
                    LogKeys.database: "\(verified.systemIdentifier) -> \(node.systemIdentifier)",
                    LogKeys.count: "\(host.liveHandlers.count)",
                ])
            let highest = state.withLock { $0.highestToken }
            stopEverything(host: host, reason: "another database")
            await startOver(host: host, reason: "another database", waitOneTTL: false, tokensPast: highest)
            // Nothing this replica was told concerns that database.
            state.withLock { state in
                state.acknowledged.removeAll(at: clock.now)
                state.forgetAfterCheck.removeAll()
                state.highestToken = FencingToken(0)
                state.verifiedNode = node
                state.pendingNode = nil
            }
            store.trust(node)
            return true
        }
        let (acknowledged, highest) = state.withLock { state in
            // Pruned first: renewals (which prune) may have failed for longer than the window,
            // and what is older than it may have been purged or swept since, tombstones gone.
            state.acknowledged.prune(at: clock.now)
            return (state.acknowledged.all, state.highestToken)
        }
        let answer: FailoverCheckAnswer
        do {
            answer = try await store.failoverCheck(Array(acknowledged.keys))
        } catch {
            logger.warning(
                "the database failed over; checking what it kept failed, renewing nothing until it succeeds",
                metadata: [LogKeys.error: "\(error)"])
            return true
        }
        if let answered = answer.node,
            answered.systemIdentifier != node.systemIdentifier || answered.timeline != node.timeline
        {
            // The failover check ran on another node than the one to check: a pool still holding a
            // connection to the old primary (retry: no renewal until the two agree), or yet
            // another failover since (check that newer node next).
            logger.warning(
                "the database check was answered by another node, checking again",
                metadata: [LogKeys.database: "timeline \(answered.timeline), expected \(node.timeline)"])
            if answered.systemIdentifier == node.systemIdentifier, answered.timeline > node.timeline {
                var newer = node
                newer.timeline = answered.timeline
                state.withLock { $0.pendingNode = newer }
            }
            return true
        }
        let missing = Self.losses(of: acknowledged, highest: highest, in: answer)
        let failover = node.timeline != verified.timeline
        if failover {
            state.withLock { $0.databaseFailovers += 1 }
            metrics.databaseFailovers.increment()
        } else {
            state.withLock { $0.checksOnSuspicion += 1 }
            metrics.checksOnSuspicion.increment()
        }
        let moved =
            failover
            ? "timeline \(verified.timeline) -> \(node.timeline) at \(node.address)"
            : "timeline \(node.timeline) at \(node.address), checked after a refused write"
        guard !missing.isEmpty else {
            if failover {
                logger.notice(
                    "the database failed over and kept everything this replica had acknowledged",
                    metadata: [LogKeys.database: "\(moved)", LogKeys.count: "\(acknowledged.count)"])
            } else {
                logger.info(
                    "the database kept everything this replica had acknowledged",
                    metadata: [LogKeys.database: "\(moved)", LogKeys.count: "\(acknowledged.count)"])
            }
            state.withLock { state in
                state.verifiedNode = node
                state.pendingNode = nil
            }
            store.trust(node)
            return false
        }
        stopEverything(host: host, reason: "failover check failed: the database lost acknowledged writes")
        state.withLock { $0.failedChecks += 1 }
        metrics.failedChecks.increment()
        logger.critical(
            "failover check failed: the database lost writes it had acknowledged (it went back in time); voiding every lease here, waiting one lease TTL and registering anew",
            metadata: [
                LogKeys.database: "\(moved)", LogKeys.count: "\(missing.count)",
                LogKeys.detail: "\(missing.prefix(20).joined(separator: "; "))",
            ])
        await startOver(host: host, reason: "failover check failed", waitOneTTL: true, tokensPast: highest)
        // Reported once: what was lost is gone, and the next failover is checked against what
        // this database acknowledges from now on.
        state.withLock { state in
            state.acknowledged.removeAll(at: clock.now)
            state.forgetAfterCheck.removeAll()
            state.verifiedNode = node
            state.pendingNode = nil
        }
        store.trust(node)
        return true
    }

    /// What `answer` shows the database lost of what this replica was told: each entry names a
    /// position (or the token sequence) behind what was acknowledged. Empty: nothing lost.
    static func losses(
        of acknowledged: [HandlerID: FailoverCheckAnswer.Position], highest: FencingToken,
        in answer: FailoverCheckAnswer
    ) -> [String] {
        var missing: [String] = []
        if answer.highestToken < highest {
            missing.append("token sequence at \(answer.highestToken), this replica was granted \(highest)")
        }
        for (id, mine) in acknowledged.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
            guard let theirs = answer.handlers[id] else {
                // Purged since, by any replica, from a position at or past ours: gone on purpose,
                // not lost.
                if let purged = answer.purged[id], !purged.isBehind(mine) { continue }
                missing.append("\(id): gone (had token \(mine.token), sequence \(mine.lastSequence))")
                continue
            }
            // A higher token is another replica's newer claim; a lower one, or the same token with
            // fewer events, is history this replica saw acknowledged and the database lost.
            if theirs.isBehind(mine) {
                missing.append(
                    "\(id): token \(theirs.token), sequence \(theirs.lastSequence) "
                        + "(had token \(mine.token), sequence \(mine.lastSequence))")
            }
        }
        return missing
    }

    /// Refuses claims, writes and renewals, then stops every handler here (nothing launched now
    /// could outlive the registration `startOver` makes). `startOver` lifts it.
    private func stopEverything(host: HandlerHost, reason: String) {
        discardReservedTokens()
        state.withLock { state in
            state.startingOver = true
            state.lastRenewal = nil
            state.lastReading = nil
        }
        host.fence(host.liveHandlers, reason: reason)
    }

    /// How long `startOver` tries to move the token sequence before it registers anyway.
    static let tokenMoveLimit = Duration.seconds(10)

    /// After `stopEverything`: moves the token sequence past `token`, optionally waits one TTL
    /// without renewing, then registers anew (voiding whatever this replica id still held).
    private func startOver(host: HandlerHost, reason: String, waitOneTTL: Bool, tokensPast token: FencingToken) async {
        defer { state.withLock { $0.startingOver = false } }
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
        state.withLock { state in
            state.highestToken = max(state.highestToken, lease.token)
            acknowledge(&state, lease, lastSequence: lastSequence)
        }
    }

    /// A checkpoint of `lease` committed up to `lastSequence`.
    func acknowledged(_ lease: Lease, lastSequence: Int64) {
        state.withLock { acknowledge(&$0, lease, lastSequence: lastSequence) }
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

    private func acknowledge(_ state: inout State, _ lease: Lease, lastSequence: Int64) {
        state.acknowledged.record(
            lease.handlerID, FailoverCheckAnswer.Position(token: lease.token, lastSequence: lastSequence), at: clock.now
        )
    }

    /// The database node of the last renewal, and how often its history was checked.
    var database: (node: DatabaseNode?, failovers: Int, failedChecks: Int) {
        state.withLock { ($0.node, $0.databaseFailovers, $0.failedChecks) }
    }

    /// Failover checks of an unchanged node after a refused write (or a reserved token it was not past).
    var checksOnSuspicion: Int { state.withLock { $0.checksOnSuspicion } }
}
