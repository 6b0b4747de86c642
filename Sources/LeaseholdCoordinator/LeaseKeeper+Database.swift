import CoreMetrics
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
/// WAL timeline); this part acts when they change:
///
/// - another system identifier is another database: every handler here stops and the replica
///   registers anew (nothing it held there means anything here);
/// - a new timeline is a failover (or a point-in-time recovery): the replica reads back what it
///   had acknowledged — each live handler's token and last durable sequence, and the highest token
///   it was ever granted. When the database has all of it, nothing was lost and work goes on. When
///   it has less, it went back in time: every handler here stops, the token sequence is moved past
///   every token this replica saw, the replica renews nothing for one TTL (its leases lapse, and
///   every other replica notices at its next renewal), then registers anew; logged as critical and
///   counted in `leasehold_database_regressions_total`.
extension LeaseKeeper {
    /// - Returns: true when the renewal that brought `node` must not be acted on.
    func databaseMoved(_ node: DatabaseNode, host: HandlerHost) async -> Bool {
        metrics.databaseTimeline.record(node.timeline)
        metrics.synchronousStandbys.record(node.synchronousStandbys ?? -1)
        enum Verdict {
            case same, busy, older
            case check(DatabaseNode)
        }
        let verdict = state.withLock { state -> Verdict in
            state.node = node
            guard let verified = state.verifiedNode else {
                state.verifiedNode = node
                return .same
            }
            // One check at a time; renewals answered meanwhile prove nothing.
            if state.checkingDatabase { return .busy }
            if verified.systemIdentifier == node.systemIdentifier {
                if node.timeline == verified.timeline { return .same }
                // Timelines only rise: an answer from an older one came from a demoted primary.
                if node.timeline < verified.timeline { return .older }
            }
            state.checkingDatabase = true
            return .check(verified)
        }
        let verified: DatabaseNode
        switch verdict {
        case .same: return false
        case .busy: return true
        case .older:
            logger.warning(
                "a renewal was answered on an older timeline (a demoted primary?), not acted on",
                metadata: [LogKeys.database: "timeline \(node.timeline) at \(node.address)"])
            return true
        case .check(let node): verified = node
        }
        defer { state.withLock { $0.checkingDatabase = false } }
        if verified.systemIdentifier != node.systemIdentifier {
            metrics.databaseReplaced.increment()
            logger.error(
                "another database answered (system identifier changed), stopping every handler and registering anew",
                metadata: [
                    LogKeys.database: "\(verified.systemIdentifier) -> \(node.systemIdentifier)",
                    LogKeys.count: "\(host.liveHandlers.count)",
                ])
            await startOver(host: host, reason: "another database", waitOneTTL: false)
            state.withLock { $0.verifiedNode = node }
            return true
        }
        let (acknowledged, highest) = state.withLock { ($0.acknowledged, $0.highestToken) }
        let audit: StoreAudit
        do {
            audit = try await store.audit(Array(acknowledged.keys))
        } catch {
            // Not acted on until checked: the next renewal asks again (and self-fencing stops
            // everything should it never succeed).
            logger.warning(
                "the database failed over; checking what it kept failed, retrying",
                metadata: [LogKeys.error: "\(error)"])
            return true
        }
        var missing: [String] = []
        if audit.highestToken < highest {
            missing.append("token sequence at \(audit.highestToken), this replica was granted \(highest)")
        }
        for (id, mine) in acknowledged.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
            guard let theirs = audit.handlers[id] else {
                missing.append("\(id): gone (had token \(mine.token), sequence \(mine.lastSequence))")
                continue
            }
            // A higher token is another replica's newer claim; a lower one, or the same token with
            // fewer events, is history this replica saw acknowledged and the database lost.
            if theirs.token < mine.token || (theirs.token == mine.token && theirs.lastSequence < mine.lastSequence) {
                missing.append(
                    "\(id): token \(theirs.token), sequence \(theirs.lastSequence) "
                        + "(had token \(mine.token), sequence \(mine.lastSequence))")
            }
        }
        state.withLock { $0.databaseFailovers += 1 }
        metrics.databaseFailovers.increment()
        guard !missing.isEmpty else {
            logger.notice(
                "the database failed over and kept everything this replica had acknowledged",
                metadata: [
                    LogKeys.database: "timeline \(verified.timeline) -> \(node.timeline) at \(node.address)",
                    LogKeys.count: "\(acknowledged.count)",
                ])
            state.withLock { $0.verifiedNode = node }
            return false
        }
        state.withLock { $0.databaseRegressions += 1 }
        metrics.databaseRegressions.increment()
        logger.critical(
            "the database went back in time: it lost writes it had acknowledged; voiding every lease here, waiting one lease TTL and registering anew",
            metadata: [
                LogKeys.database: "timeline \(verified.timeline) -> \(node.timeline) at \(node.address)",
                LogKeys.count: "\(missing.count)",
                LogKeys.detail: "\(missing.prefix(20).joined(separator: "; "))",
            ])
        await startOver(host: host, reason: "database went back in time", waitOneTTL: true, tokensPast: highest)
        state.withLock { $0.verifiedNode = node }
        return true
    }

    /// Stops every handler here, optionally moves the token sequence past `tokensPast` and waits
    /// one TTL without renewing, then registers anew (voiding whatever this replica id still held).
    private func startOver(
        host: HandlerHost, reason: String, waitOneTTL: Bool, tokensPast token: FencingToken? = nil
    ) async {
        // Refuse claims and writes first (nothing launched now could outlive the registration below).
        state.withLock { state in
            state.startingOver = true
            state.lastRenewal = nil
            state.lastReading = nil
        }
        defer { state.withLock { $0.startingOver = false } }
        host.fence(host.liveHandlers, reason: reason)
        do {
            if let token {
                var delay = Duration.milliseconds(100)
                while true {
                    do {
                        try await store.advanceTokens(past: token)
                        break
                    } catch {
                        logger.warning(
                            "moving the token sequence failed, retrying", metadata: [LogKeys.error: "\(error)"])
                        try await clock.sleep(for: delay)
                        delay = min(delay * 2, .seconds(2))
                    }
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

    /// The handler left memory here: its history is no longer this replica's to check.
    func forget(_ lease: Lease) {
        state.withLock { state in
            if state.acknowledged[lease.handlerID]?.token == lease.token {
                state.acknowledged[lease.handlerID] = nil
            }
        }
    }

    private func acknowledge(_ state: inout State, _ lease: Lease, lastSequence: Int64) {
        let current = state.acknowledged[lease.handlerID]
        if let current,
            current.token > lease.token || (current.token == lease.token && current.lastSequence >= lastSequence)
        {
            return
        }
        state.acknowledged[lease.handlerID] = StoreAudit.Position(token: lease.token, lastSequence: lastSequence)
    }

    /// The database node of the last renewal, and how often its history was checked.
    var database: (node: DatabaseNode?, failovers: Int, regressions: Int) {
        state.withLock { ($0.node, $0.databaseFailovers, $0.databaseRegressions) }
    }
}
