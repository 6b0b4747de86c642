import Foundation
import HTTPTypes
import Hummingbird
import LeaseholdCoordinator
import LeaseholdEngine
import LeaseholdStore
import NIOCore

extension LeaseholdAPI {
    /// Leasehold's own view of the cluster: replicas, counts, one handler's lease.
    func addClusterRoutes(to router: Router<BasicRequestContext>) {
        router.get("/cluster") { _, _ in try await cluster() }
        router.get("/cluster/handlers/{handler_id}") { _, context in try await clusterHandler(try id(context)) }
        router.get("/cluster/history") { request, _ in try await history(request) }
    }

    func cluster() async throws -> Response {
        let ttl = coordinator.configuration.leaseTTL
        async let replicas = store.replicas(aliveWithin: ttl)
        async let counts = store.counts()
        let fences = coordinator.fenceCounts
        let (replicaList, handlerCounts) = try await (replicas, counts)
        return WireFormat.json([
            "replica_id": .string(coordinator.replicaID.rawValue),
            "replicas": .array(
                replicaList.map { replica in
                    [
                        "id": .string(replica.id.rawValue), "address": .string(replica.address),
                        "last_heartbeat": .string(WireFormat.timestamp(replica.heartbeatAt)),
                        "started_at": .string(WireFormat.timestamp(replica.startedAt)),
                        "handlers_owned": .int(replica.handlersOwned), "alive": .bool(replica.alive),
                    ]
                }),
            "handlers": [
                "running": .int(handlerCounts.running), "hibernated": .int(handlerCounts.hibernated),
                "completed": .int(handlerCounts.completed), "failed": .int(handlerCounts.failed),
                "cancelled": .int(handlerCounts.cancelled),
            ],
            "live_here": .int(coordinator.liveHandlerIDs.count),
            "database": database,
            "fencing": [
                "self_fences": .int(fences.selfFences), "rejected_writes": .int(fences.rejectedWrites),
                "clock_steps": .int(coordinator.clockSteps),
            ],
        ])
    }

    /// The database node that answered this replica's last renewal (null on the in-memory store).
    var database: JSONValue {
        let database = coordinator.database
        guard let node = database.node else { return .null }
        return [
            "system_identifier": .string(node.systemIdentifier), "timeline": .int(node.timeline),
            "node": .string(node.address),
            "synchronous_standbys": node.synchronousStandbys.map { .int($0) } ?? .null,
            "failovers_seen": .int(database.failovers), "failover_checks_failed": .int(database.failedChecks),
        ]
    }

    func clusterHandler(_ id: HandlerID) async throws -> Response {
        guard let record = try await store.handler(id) else { throw APIError(.notFound, "Handler not found") }
        let pending = try await store.pendingInbox(id).count
        return WireFormat.json([
            "handler_id": .string(record.id.rawValue),
            "workflow_name": .string(record.workflowName),
            "status": .string(record.status.rawValue),
            "owner": record.owner.map { .string($0.rawValue) } ?? .null,
            "fencing_token": JSONValue.int(Int(record.fencingToken.rawValue)),
            "lease_expires_at": record.leaseExpiresAt.map { .string(WireFormat.timestamp($0)) } ?? .null,
            "hibernated": .bool(record.hibernated),
            "inbox_pending": .int(pending),
            "last_sequence": .int(Int(record.lastSequence)),
            "live_here": .bool(coordinator.liveHandlerIDs.contains(id)),
            "lease_history": .array(try await store.leaseHistory(id).map(Self.change)),
        ])
    }

    /// `GET /cluster/history?limit=N`: the latest ownership changes cluster-wide, newest first.
    func history(_ request: Request) async throws -> Response {
        var limit = 100
        if let text = request.uri.queryParameters.get("limit"), !text.isEmpty {
            guard let value = Int(text), (1...1000).contains(value) else {
                throw APIError(.badRequest, "limit must be an integer from 1 to 1000, got '\(text)'")
            }
            limit = value
        }
        let changes = try await store.recentLeaseChanges(limit: limit)
        return WireFormat.json(["changes": .array(changes.map(Self.change))])
    }

    static func change(_ change: LeaseChange) -> JSONValue {
        [
            "handler_id": .string(change.handlerID.rawValue), "at": .string(WireFormat.timestamp(change.at)),
            "change": .string(change.kind.rawValue), "replica": change.replica.map { .string($0.rawValue) } ?? .null,
            "fencing_token": .int(Int(change.token.rawValue)),
        ]
    }
}
