import Foundation
import LeaseholdEngine

/// Crash containment's part of the store contract. A single process has no next replica for a
/// trap to reach, so nothing calls `recordCrash` on it in production; it keeps the contract so
/// that both stores pass the same conformance suite, and releases quarantined handlers.
extension InMemoryStore {
    public func recordCrash(of replica: ReplicaID, handlers: [HandlerID], all: Bool, signal: Int32) async throws
        -> [HandlerID]
    {
        let named = Set(handlers)
        var marked: [HandlerID] = []
        for (id, entry) in entries
        where entry.record.owner == replica && entry.record.status == .running && (all || named.contains(id)) {
            entries[id]?.suspect = true
            marked.append(id)
        }
        return marked.sorted { $0.rawValue < $1.rawValue }
    }

    public func releaseQuarantine(_ handlerID: HandlerID) async throws -> Bool {
        guard var entry = entries[handlerID], entry.record.status == .failed, entry.state.quarantine != nil else {
            return false
        }
        entry.record.status = .running
        entry.record.error = nil
        entry.record.result = nil
        entry.record.completedAt = nil
        entry.record.owner = nil
        entry.record.leaseExpiresAt = nil
        entry.record.hibernated = false
        entry.record.wakeAt = nil
        entry.record.updatedAt = now()
        entries[handlerID] = entry
        signals.inboxChanged(handlerID.rawValue)
        return true
    }
}
