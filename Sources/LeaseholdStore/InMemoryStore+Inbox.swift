import Foundation
import LeaseholdEngine
import LeaseholdKit

/// The inbox, cancellation and retention of the in-memory store.
extension InMemoryStore {
    /// See `HandlerStore.appendInbox(_:_:accepting:from:claim:)`.
    public func appendInbox(
        _ handlerID: HandlerID, _ event: InboxEvent, accepting: [String]?, from replica: ReplicaID?, claim: Bool
    ) async throws -> InboxReceipt {
        guard var entry = entries[handlerID] else { throw StoreError.handlerNotFound(handlerID) }
        guard entry.record.status == .running else { throw StoreError.handlerFinished(handlerID) }
        let before = entry.record
        if let accepting, !accepting.contains(before.workflowName) {
            return InboxReceipt(
                owner: before.owner, hibernated: before.hibernated, inserted: false, accepted: false,
                workflowName: before.workflowName)
        }
        let inserted = !entry.inbox.contains { $0.event.id == event.id }
        if inserted {
            entry.inbox.append((event, false))
            entries[handlerID] = entry
        }
        var receipt = InboxReceipt(
            owner: before.owner, hibernated: before.hibernated, inserted: inserted, workflowName: before.workflowName)
        if let replica, claim {
            // Nothing suspends between the append and the claim: one step, as in one statement.
            receipt.claimed = try await self.claim(replica, limit: 1, only: handlerID).first
        }
        if receipt.claimed == nil {
            if let replica, let current = entries[handlerID]?.record, current.owner == replica {
                receipt.pending = PendingInbox(
                    token: current.fencingToken,
                    events: entries[handlerID]?.inbox.filter { !$0.consumed }.map(\.event) ?? [])
            }
            signals.inboxChanged(handlerID.rawValue)
        }
        return receipt
    }

    /// See `HandlerStore.cancel(_:)`.
    public func cancel(_ handlerID: HandlerID) async throws -> CancelOutcome {
        guard var entry = entries[handlerID] else { throw StoreError.handlerNotFound(handlerID) }
        guard entry.record.status == .running else { return .alreadyFinished(entry.record) }
        let time = now()
        let terminal = LogRecord.cancelled(sequence: Int64(entry.log.count))
        entry.log.append(terminal)
        entry.record.status = .cancelled
        for index in entry.inbox.indices { entry.inbox[index].consumed = true }
        entry.record.result = terminal
        entry.record.lastSequence = terminal.sequence
        entry.record.fencingToken = nextToken()
        entry.record.owner = nil
        entry.record.leaseExpiresAt = nil
        entry.record.hibernated = false
        entry.record.updatedAt = time
        entry.record.completedAt = time
        note(.cancelled, &entry, replica: nil)
        entries[handlerID] = entry
        signals.logChanged(handlerID.rawValue)
        signals.inboxChanged(handlerID.rawValue)
        // A child's parent learns of its end from its start event (which every child has, even
        // one that never ran).
        if let start = entry.inbox.first(where: { $0.event.id == "start" }),
            let link = ParentLink(startEvent: start.event.event.value)
        {
            tellParent(HandlerID(link.handlerID), InboxEvent(id: link.noticeID, event: link.notice(status: .cancelled)))
        }
        return .cancelled(entry.record)
    }

    /// See `HandlerStore.purgeFinished(olderThan:limit:)`.
    public func purgeFinished(olderThan age: Duration, limit: Int) async throws -> [HandlerID] {
        let cutoff = now().addingTimeInterval(
            -age.seconds)
        let doomed = entries.values
            .compactMap { entry -> (HandlerID, Date)? in
                guard entry.record.status.isFinished, let done = entry.record.completedAt, done < cutoff else {
                    return nil
                }
                return (entry.record.id, done)
            }
            .sorted { $0.1 < $1.1 }
            .prefix(limit)
            .map(\.0)
        for id in doomed { entries[id] = nil }
        return Array(doomed)
    }

    /// See `HandlerStore.delete(_:run:)`.
    public func delete(_ handlerID: HandlerID, run runID: String) async throws -> Bool {
        guard let record = entries[handlerID]?.record, record.runID == runID else { return false }
        entries[handlerID] = nil
        let deletedAt = now()
        if tombstones.count >= max(64, 2 * tombstonesAfterLastExpiry) {
            let cutoff = deletedAt.addingTimeInterval(-Self.tombstoneLife)
            tombstones = tombstones.filter { $0.value.at >= cutoff }
            tombstonesAfterLastExpiry = tombstones.count
        }
        let position = FailoverCheckAnswer.Position(token: record.fencingToken, lastSequence: record.lastSequence)
        tombstones[handlerID] = (position, deletedAt)
        signals.logChanged(handlerID.rawValue)
        signals.inboxChanged(handlerID.rawValue)
        return true
    }
}
