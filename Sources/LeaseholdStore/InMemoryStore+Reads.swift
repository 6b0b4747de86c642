import Foundation
import LeaseholdEngine
import LeaseholdKit

/// Reads of the in-memory store: inboxes, records, logs, lease history, replicas and counts.
extension InMemoryStore {
    /// See `HandlerStore.pendingInbox(of:)`.
    public func pendingInbox(of handlerIDs: [HandlerID]) async throws -> [HandlerID: [InboxEvent]] {
        var events: [HandlerID: [InboxEvent]] = [:]
        for id in handlerIDs {
            let pending = entries[id]?.inbox.filter { !$0.consumed }.map(\.event) ?? []
            if !pending.isEmpty { events[id] = pending }
        }
        return events
    }

    /// See `HandlerStore.pendingInbox(_:)`.
    public func pendingInbox(_ handlerID: HandlerID) async throws -> [InboxEvent] {
        entries[handlerID]?.inbox.filter { !$0.consumed }.map(\.event) ?? []
    }

    /// The handler's record; nil when there is no handler with this id.
    public func handler(_ handlerID: HandlerID) async throws -> HandlerRecord? {
        entries[handlerID].map { published($0.record) }
    }

    /// The handlers matching `filter`, oldest first (by start).
    public func handlers(_ filter: HandlerFilter) async throws -> [HandlerRecord] {
        entries.values.map { published($0.record) }.filter(filter.matches).sorted { $0.startedAt < $1.startedAt }
    }

    /// See `HandlerStore.events(_:after:limit:)`.
    public func events(_ handlerID: HandlerID, after sequence: Int64, limit: Int) async throws -> [LogRecord] {
        guard let log = entries[handlerID]?.log else { return [] }
        let start = Int(max(0, sequence + 1))
        guard start < log.count else { return [] }
        return Array(log[start..<min(log.count, start + limit)])
    }

    /// See `HandlerStore.leaseHistory(_:)`.
    public func leaseHistory(_ handlerID: HandlerID) async throws -> [LeaseChange] {
        entries[handlerID]?.history ?? []
    }

    /// See `HandlerStore.recentLeaseChanges(limit:)`.
    public func recentLeaseChanges(limit: Int) async throws -> [LeaseChange] {
        Array(recent.suffix(limit).reversed())
    }

    /// Every registered replica, by id; `alive` when it renewed within `ttl`.
    public func replicas(aliveWithin ttl: Duration) async throws -> [ReplicaRecord] {
        let time = now()
        let window = ttl.seconds
        return replicaTable.map { id, replica in
            ReplicaRecord(
                id: id, address: replica.address, startedAt: replica.startedAt, heartbeatAt: replica.heartbeatAt,
                handlersOwned: entries.values.filter { $0.record.owner == id }.count,
                alive: time.timeIntervalSince(replica.heartbeatAt) <= window)
        }.sorted { $0.id.rawValue < $1.id.rawValue }
    }

    /// Counts of all handlers by status (see `HandlerCounts`).
    public func counts() async throws -> HandlerCounts {
        var counts = HandlerCounts()
        let time = now()
        for entry in entries.values {
            if let expiry = published(entry.record).leaseExpiresAt, expiry <= time { counts.expiredLeases += 1 }
            switch entry.record.status {
            case .running: if entry.record.hibernated { counts.hibernated += 1 } else { counts.running += 1 }
            case .completed: counts.completed += 1
            case .failed: counts.failed += 1
            case .cancelled: counts.cancelled += 1
            }
        }
        return counts
    }
}
