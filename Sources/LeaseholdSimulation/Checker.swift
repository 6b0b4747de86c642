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

    func check(livenessDeadline: Duration, lastAnswerAt: Duration) async -> [String] {
        var violations: [String] = []
        let records = (try? await store.handlers(HandlerFilter())) ?? []
        var grants: [HandlerID: [(token: FencingToken, replica: ReplicaID?, at: Duration)]] = [:]
        var tokenOwners: [FencingToken: HandlerID] = [:]
        let grantKinds: Set<LeaseChange.Kind> = [.created, .claimed, .reloaded, .failedOver]
        for record in records {
            let changes = (try? await store.leaseHistory(record.id)) ?? []
            for change in changes where grantKinds.contains(change.kind) {
                if let other = tokenOwners[change.token] {
                    violations.append("token \(change.token) granted twice (\(other) and \(record.id))")
                }
                tokenOwners[change.token] = record.id
                grants[record.id, default: []].append(
                    (
                        change.token, change.replica,
                        .milliseconds(Int64((change.at.timeIntervalSince(epoch) * 1000).rounded()))
                    ))
            }
            violations += await checkLog(record)
            if record.status == .running {
                violations.append(
                    "liveness: \(record.id) (\(record.workflowName)) still running after the faults healed")
            }
        }
        // One writer at a time, by token.
        var lastToken: [HandlerID: FencingToken] = [:]
        for write in history.writes {
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
                $0.token > write.lease.token && $0.at + .milliseconds(1) < write.at
            }) {
                violations.append(
                    "two writers: \(id) \(write.kind) under token \(write.lease.token) by \(write.lease.replicaID) at \(write.at), token \(newer.token) granted to \(newer.replica.map { "\($0)" } ?? "-") at \(newer.at)"
                )
            }
        }
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
                    $0.token.rawValue > effect.token && $0.at + .milliseconds(1) < effect.at
                })
            {
                violations.append(
                    "stale effect: \(id) posting \(effect.posting) under token \(effect.token) of \(own.replica.map { "\($0)" } ?? "-") (granted at \(own.at)) at \(effect.at), token \(newer.token) granted to \(newer.replica.map { "\($0)" } ?? "-") at \(newer.at)"
                )
            }
        }
        violations += await checkAnswers(records)
        return violations
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
    private func checkAnswers(_ records: [HandlerRecord]) async -> [String] {
        var violations: [String] = []
        let byID = Dictionary(uniqueKeysWithValues: records.map { ($0.id, $0) })
        for answer in history.answers {
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
