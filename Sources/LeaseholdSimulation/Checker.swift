import Foundation
import LeaseholdEngine
import LeaseholdStore

/// Judges a run by its history alone — the database's rows, logs and lease history, the writes it
/// applied (with the lease each was made under) and the answers clients were given — never by a
/// replica's internals:
/// - one writer at a time: a write applied under token t after a higher token was granted for
///   the handler is a stale write that landed; writes of a handler never go back in token;
/// - tokens never repeat: no token is granted twice;
/// - one runner at a time: no side effect of a step (the `ledger` sample's posts) under a token
///   after a higher token of its handler was granted;
/// - logs contiguous: every handler's log is numbered 0, 1, 2, … without gap or repeat;
/// - exactly once: a counter's ticks are 1…n, once each (a tick applied twice, or lost, shows);
///   an acknowledged answer to an approval is the one its result carries;
/// - every acknowledged answer true: a `run` answered a final record the database holds; a
///   started handler exists;
/// - liveness: after the faults healed, every handler finished within the bound.
struct Checker {
    let store: InMemoryStore
    let history: History
    let epoch: Date
    /// How long after a failover that lost writes a token granted in the lost window may be
    /// granted again: until the replica that was told of it checks the new node and moves the
    /// token sequence past it (its next renewal, and one more TTL for a loaded one).
    let reissueBound: Duration
    /// Tokens granted again, and step effects of two owners, within `reissueBound` of such a
    /// failover (not violations: with an asynchronous standby the database itself forgot the
    /// grants and renewals — docs/design.md, "A database that goes back in time").
    private(set) var reissued = 0

    /// Whether `at` fell in a window of writes a failover lost.
    private func lost(_ at: Duration) -> Bool { history.rollbacks.contains { at > $0.from && at <= $0.to } }

    private func reissuedAfterLoss(first: Duration, again: Duration) -> Bool {
        history.rollbacks.contains {
            first > $0.from && first <= $0.to && again > $0.to && again <= $0.to + reissueBound
        }
    }

    mutating func check() async -> [String] {
        var violations: [String] = []
        let records = (try? await store.handlers(HandlerFilter())) ?? []
        // Grants as the database applied them (recorded at the wire: a failover that lost writes
        // takes them out of the database's own lease history, not out of what happened).
        var grants: [HandlerID: [(token: FencingToken, replica: ReplicaID?, at: Duration)]] = [:]
        var tokenOwners: [FencingToken: (lease: Lease, at: Duration)] = [:]
        for (at, lease) in history.grants {
            if let other = tokenOwners[lease.token] {
                if reissuedAfterLoss(first: other.at, again: at) {
                    reissued += 1
                } else {
                    violations.append(
                        "token \(lease.token) granted twice (\(other.lease.handlerID) to \(other.lease.replicaID) at \(other.at), then \(lease.handlerID) to \(lease.replicaID) at \(at))"
                    )
                }
            }
            tokenOwners[lease.token] = (lease, at)
            grants[lease.handlerID, default: []].append((lease.token, lease.replicaID, at))
        }
        let exempt = lostAcknowledgements()
        for record in records {
            violations += await checkLog(record)
            if record.status == .running, !exempt.contains(record.id) {
                violations.append(
                    "liveness: \(record.id) (\(record.workflowName)) still running after the faults healed (owner \(record.owner.map { "\($0)" } ?? "none"), token \(record.fencingToken), sequence \(record.lastSequence), hibernated \(record.hibernated))"
                )
            }
        }
        // One writer at a time, by token (over the writes the database still holds: a failover
        // that lost writes took them back).
        var lastToken: [HandlerID: FencingToken] = [:]
        for write in history.writes where !lost(write.at) {
            let id = write.lease.handlerID
            if let last = lastToken[id], write.lease.token < last {
                violations.append(
                    "stale write: \(id) \(write.kind) under token \(write.lease.token) by \(write.lease.replicaID) at \(write.at) after token \(last) wrote"
                )
            }
            lastToken[id] = max(lastToken[id] ?? write.lease.token, write.lease.token)
            let handlerGrants = grants[id] ?? []
            if !handlerGrants.contains(where: { $0.token == write.lease.token && $0.replica == write.lease.replicaID })
            {
                violations.append(
                    "write under a token never granted: \(id) token \(write.lease.token) by \(write.lease.replicaID)")
            }
            // A grant strictly before the write (1 ms apart: the store's clock has millisecond steps here).
            if let newer = handlerGrants.first(where: {
                $0.token > write.lease.token && $0.at + .milliseconds(1) < write.at && !lost($0.at)
            }) {
                violations.append(
                    "two writers: \(id) \(write.kind) under token \(write.lease.token) by \(write.lease.replicaID) at \(write.at), token \(newer.token) granted to \(newer.replica.map { "\($0)" } ?? "-") at \(newer.at)"
                )
            }
        }
        violations += staleEffects(grants)
        violations += await checkAnswers(records, exempt: exempt)
        return violations
    }

    /// Steps of one handler on one replica at a time (see the type's list).
    private mutating func staleEffects(
        _ grants: [HandlerID: [(token: FencingToken, replica: ReplicaID?, at: Duration)]]
    ) -> [String] {
        var violations: [String] = []
        // Steps of one handler on one replica at a time: no effect under a token after a higher
        // token of the handler was granted (the old owner must have stopped its steps by then) —
        // except after its replica id was registered again by another process, which voids that
        // id's leases at once by design (docs/design.md, "One replica id, one process": the token
        // is the guarantee there, and the old process learns at its next renewal).
        let registrations = history.registrations
        for effect in history.effects {
            let id = HandlerID(effect.handler)
            let handlerGrants = grants[id] ?? []
            guard let own = handlerGrants.first(where: { $0.token.rawValue == effect.token }) else { continue }
            let reRegistered = registrations.contains {
                $0.replica == own.replica && $0.at > own.at && $0.at < effect.at
            }
            if !reRegistered,
                let newer = handlerGrants.first(where: {
                    $0.token.rawValue > effect.token && $0.at + .milliseconds(1) < effect.at && !lost($0.at)
                })
            {
                // Just after a failover that lost writes, a replica's renewals the database forgot
                // still count for it (its self-fencing deadline is later than the database's
                // lease expiry): outside the envelope, like a token granted again.
                if history.rollbacks.contains(where: { effect.at > $0.to && effect.at <= $0.to + reissueBound }) {
                    reissued += 1
                    continue
                }
                violations.append(
                    "stale effect: \(id) posting \(effect.posting) under token \(effect.token) of \(own.replica.map { "\($0)" } ?? "-") (granted at \(own.at)) at \(effect.at), token \(newer.token) granted to \(newer.replica.map { "\($0)" } ?? "-") at \(newer.at)"
                )
            }
        }
        return violations
    }

    /// Handlers with an answer given while the database held writes it then lost (a failover to a
    /// standby that lagged): the database broke that promise, not the replicas. The replicas'
    /// duty there is to notice and stop (the failover check), which the safety properties above
    /// still judge; what those answers promised is not.
    private func lostAcknowledgements() -> Set<HandlerID> {
        let windows = history.rollbacks
        guard !windows.isEmpty else { return [] }
        var ids: Set<HandlerID> = []
        for answer in history.answers
        where windows.contains(where: { answer.at >= $0.from && answer.at <= $0.to + .seconds(1) }) {
            switch answer.kind {
            case .started(let id), .ran(let id, _, _), .sent(let id, _, _): ids.insert(id)
            case .failed: continue
            }
        }
        return ids
    }

    /// Contiguous, and each counter tick or answer applied once.
    private func checkLog(_ record: HandlerRecord) async -> [String] {
        var violations: [String] = []
        let log = (try? await store.events(record.id, after: -1, limit: 1_000_000)) ?? []
        for (index, entry) in log.enumerated() where entry.sequence != Int64(index) {
            violations.append("log of \(record.id) not contiguous: entry \(index) has sequence \(entry.sequence)")
            break
        }
        if record.workflowName == "counter", record.status == .completed {
            let ticks = log.filter { $0.type == "Tick" }.compactMap { $0.value["n"]?.intValue }
            let expected = Array(1...max(1, ticks.count))
            if ticks != expected {
                violations.append("counter \(record.id): ticks \(ticks)")
            }
        }
        return violations
    }

    /// Every acknowledged answer is true of the database.
    private func checkAnswers(_ records: [HandlerRecord], exempt: Set<HandlerID>) async -> [String] {
        var violations: [String] = []
        let byID = Dictionary(uniqueKeysWithValues: records.map { ($0.id, $0) })
        for answer in history.answers {
            switch answer.kind {
            case .started(let id), .ran(let id, _, _), .sent(let id, _, _): if exempt.contains(id) { continue }
            case .failed: continue
            }
            switch answer.kind {
            case .started(let id):
                if byID[id] == nil { violations.append("started \(id) answered, but it does not exist") }
            case .ran(let id, let status, let result):
                guard let record = byID[id] else {
                    violations.append("run answered \(id), but it does not exist")
                    continue
                }
                if record.status != status || record.result?.value != result {
                    violations.append(
                        "run answered \(id) \(status) \(result.map { "\($0)" } ?? "nil"), the database holds \(record.status) \(record.result.map { "\($0.value)" } ?? "nil")"
                    )
                }
            case .sent(let id, _, let response):
                // The answer resumes the waiting step, whose result carries it: applied, and once
                // (a second delivery of the same inbox event finds no waiter and changes nothing).
                guard let record = byID[id], record.status != .failed, record.status != .cancelled else { continue }
                let applied = record.result?.value["result"]?["response"]?.stringValue
                if record.status != .completed || applied != response {
                    violations.append(
                        "send to \(id) acknowledged, but it ended \(record.status) with \(record.result.map { "\($0.value)" } ?? "no result")"
                    )
                }
            case .failed: continue
            }
        }
        return violations
    }
}
