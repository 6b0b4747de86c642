import Foundation
import LeaseholdStore

/// The lease machine's failover check decisions: when a check starts, what its answer means, and
/// when what refused writes concerned is forgotten. Why the check exists, and what each outcome
/// costs, is told in `LeaseKeeper+FailoverCheck.swift`, which performs them.
extension LeaseMachine {
    /// One failover check: `node` is checked against what `verified` acknowledged. Numbered from 1.
    struct Check: Equatable, Sendable {
        var node: DatabaseNode
        var verified: DatabaseNode
        var number: Int
    }

    enum NodeVerdict: Equatable {
        case same
        /// The first node met: trust it (nothing was acknowledged before it).
        case first(DatabaseNode)
        /// A check runs: this node's answers prove nothing meanwhile.
        case busy
        case check(Check)
    }

    /// The node that answered a renewal. One check at a time: while a node change is checked,
    /// renewals answered meanwhile prove nothing; while the verified node is checked on a
    /// suspicion (seconds at 100,000 positions), its renewals count as before the suspicion.
    /// - Returns: whether to check before acting on the renewal (and trusts the first node met).
    mutating func nodeVerdict(_ node: DatabaseNode) -> NodeVerdict {
        self.node = node
        guard let verified = verifiedNode, configuration.failoverCheck else {
            verifiedNode = node
            return .first(node)
        }
        let same = Self.sameHistory(verified, node)
        if checkingDatabase { return same && pendingNode == nil ? .same : .busy }
        if same {
            guard suspected else { return .same }
            return .check(beginCheck(of: verified, against: verified))
        }
        let check = beginCheck(of: node, against: verified)
        pendingNode = node
        // Tokens reserved from the node before are not used on this one, whatever the check finds.
        discardReservedTokens()
        return .check(check)
    }

    mutating func beginCheck(of node: DatabaseNode, against verified: DatabaseNode) -> Check {
        checkingDatabase = true
        suspected = false
        checksStarted += 1
        return Check(node: node, verified: verified, number: checksStarted)
    }

    /// What a check needs read, or that it needs nothing read.
    enum CheckPlan: Equatable {
        /// Another system identifier: another database. Stop everything, move its token sequence
        /// past `highest`, register anew (`replaced(by:at:)` after).
        case anotherDatabase(highest: FencingToken)
        /// Read these positions back from the node (`checkAnswered`).
        case read([HandlerID: FailoverCheckAnswer.Position], highest: FencingToken)
    }

    mutating func planCheck(_ check: Check, at now: Duration) -> CheckPlan {
        if check.verified.systemIdentifier != check.node.systemIdentifier {
            stopEverything()
            return .anotherDatabase(highest: highestToken)
        }
        // Pruned first: renewals (which prune) may have failed for longer than the window, and what
        // is older than it may have been purged or swept since, tombstones gone.
        _ = acknowledged.prune(at: now)
        return .read(acknowledged.all, highest: highestToken)
    }

    enum CheckOutcome: Equatable {
        /// The read failed: nothing is renewed until a check succeeds.
        case unreadable
        /// Another node answered the read (a pool still on the old primary, or a newer failover):
        /// check again; `newer` when that is the node checked next.
        case answeredElsewhere(timeline: Int, newer: Bool)
        /// Everything acknowledged is there: trust `node`, go on.
        case kept(failover: Bool, positions: Int)
        /// The database went back in time: every handler here stops (already refused), the token
        /// sequence moves past `highest`, one TTL without renewals, then a registration anew
        /// (`restartedAfterLoss(on:at:)` after).
        case lost(missing: [String], failover: Bool, highest: FencingToken)

        /// Whether the renewal that met the node must not be acted on.
        var refusesRenewal: Bool {
            if case .kept = self { return false }
            return true
        }
    }

    /// The read of `positions` for `check` answered `answer` (nil: it failed).
    mutating func checkAnswered(
        _ check: Check, positions: [HandlerID: FailoverCheckAnswer.Position], highest: FencingToken,
        answer: FailoverCheckAnswer?
    ) -> CheckOutcome {
        guard let answer else { return .unreadable }
        let node = check.node
        if let answered = answer.node,
            answered.systemIdentifier != node.systemIdentifier || answered.timeline != node.timeline
        {
            let newer = answered.systemIdentifier == node.systemIdentifier && answered.timeline > node.timeline
            if newer {
                var next = node
                next.timeline = answered.timeline
                pendingNode = next
            }
            return .answeredElsewhere(timeline: answered.timeline, newer: newer)
        }
        let missing = Self.losses(of: positions, highest: highest, in: answer)
        let failover = node.timeline != check.verified.timeline
        if failover { databaseFailovers += 1 } else { checksOnSuspicion += 1 }
        guard !missing.isEmpty else {
            verifiedNode = node
            pendingNode = nil
            return .kept(failover: failover, positions: positions.count)
        }
        stopEverything()
        failedChecks += 1
        return .lost(missing: missing, failover: failover, highest: highest)
    }

    /// The check numbered `number` ended. One that passed shows the refusals raised before it
    /// started were what they seemed: what they concerned is forgotten.
    mutating func checkEnded(_ number: Int, refused: Bool) {
        checkingDatabase = false
        guard !refused else { return }
        var kept: [(Lease, Int)] = []
        for (lease, check) in forgetAfterCheck {
            if check <= number {
                acknowledged.forget(lease.handlerID, upTo: lease.token)
            } else {
                kept.append((lease, check))
            }
        }
        forgetAfterCheck = kept
    }

    /// Refuses claims, writes and renewals from now on (the executor stops every handler);
    /// `startedOver()` lifts it.
    mutating func stopEverything() {
        discardReservedTokens()
        startingOver = true
        lastRenewal = nil
        lastReading = nil
    }

    mutating func startedOver() { startingOver = false }

    /// After `anotherDatabase` and the start over: nothing this replica was told concerns `node`'s
    /// database. - Returns: the node to trust.
    mutating func replaced(by node: DatabaseNode, at now: Duration) -> DatabaseNode {
        acknowledged.removeAll(at: now)
        forgetAfterCheck.removeAll()
        highestToken = FencingToken(0)
        verifiedNode = node
        pendingNode = nil
        return node
    }

    /// After `lost` and the start over: reported once; the next failover is checked against what
    /// this database acknowledges from now on. - Returns: the node to trust.
    mutating func restartedAfterLoss(on node: DatabaseNode, at now: Duration) -> DatabaseNode {
        acknowledged.removeAll(at: now)
        forgetAfterCheck.removeAll()
        verifiedNode = node
        pendingNode = nil
        return node
    }

    // MARK: - Suspicion

    /// The database may have lost writes: the next renewal checks the node it meets.
    mutating func suspect() { suspected = true }

    /// Writes of `leases` were refused: what this replica was told of them is forgotten once a
    /// check that started after now passed — or at once when the database names no node (it is
    /// never checked). - Returns: whether a check is now due (the executor sends a renewal).
    mutating func refused(_ leases: [Lease]) -> Bool {
        guard !leases.isEmpty else { return false }
        guard verifiedNode != nil else {
            for lease in leases { acknowledged.forget(lease.handlerID, upTo: lease.token) }
            return false
        }
        let check = checksStarted + 1
        forgetAfterCheck.append(contentsOf: leases.map { ($0, check) })
        // Bounded: a forget dropped only keeps a position longer (the database only moves a
        // handler forward from what it acknowledged; a kept one costs a few bytes).
        let excess = forgetAfterCheck.count - CoordinatorConfiguration.acknowledgementLimit
        if excess > 0 { forgetAfterCheck.removeFirst(excess) }
        suspected = true
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
}
