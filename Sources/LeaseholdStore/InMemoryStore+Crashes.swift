import Foundation
import LeaseholdEngine

/// Crash containment's part of the store contract. A single process has no next replica for a
/// trap to reach, so nothing calls `recordCrash` on it in production; it keeps the contract so
/// that both stores pass the same conformance suite, and releases quarantined handlers.
extension InMemoryStore {
    /// See `HandlerStore.recordCrash(of:handlers:all:signal:)`.
    public func recordCrash(of replica: ReplicaID, handlers: [HandlerID], all: Bool, signal: Int32) async throws
        -> [HandlerID]
    {
        let named = Set(handlers)
        var marked: [HandlerID] = []
        for (id, entry) in entries
        where entry.record.status == .running && (named.contains(id) || (all && entry.record.owner == replica)) {
            entries[id]?.suspect = true
            marked.append(id)
        }
        return marked.sorted { $0.rawValue < $1.rawValue }
    }

    /// Writes here are never in flight across a call, so the outcome is already known.
    public func preventCreation(_ handler: NewHandler, reason: String?) async throws -> HandlerRecord? {
        if let existing = entries[handler.id] { return published(existing.record) }
        guard let reason else { return nil }
        let time = now()
        let record = HandlerRecord(
            id: handler.id, workflowName: handler.workflowName, runID: handler.runID, status: .failed, error: reason,
            result: nil, startedAt: time, updatedAt: time, completedAt: time, owner: nil, leaseExpiresAt: nil,
            fencingToken: nextToken(), hibernated: false, lastSequence: -1, wakeAt: nil)
        var state = HandlerState(workflowName: handler.workflowName)
        state.status = .failed
        state.error = reason
        entries[handler.id] = Entry(record: record, state: state, inbox: [], log: [])
        signals.logChanged(handler.id.rawValue)
        return nil
    }

    /// See `HandlerStore.releaseQuarantine(_:)`.
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
