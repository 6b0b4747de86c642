import Foundation
import HTTPTypes
import Hummingbird
import LeaseholdCoordinator
import LeaseholdEngine
import LeaseholdStore
import NIOCore

extension LeaseholdAPI {
    /// Liveness, readiness, metrics, the OpenAPI document and the cluster page.
    func addOpsRoutes(to router: Router<BasicRequestContext>) {
        router.get("/health") { _, _ in try await health() }
        router.get("/ready") { _, _ in ready() }
        router.get("/metrics") { _, _ in
            Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                body: ResponseBody(byteBuffer: ByteBuffer(string: configuration.metricsText())))
        }
        router.get("/openapi.json") { _, _ in WireFormat.json(OpenAPI.document()) }
        router.get("/") { _, _ in ClusterPage.response() }
    }

    func health() async throws -> Response {
        do {
            _ = try await store.handler(HandlerID("-health-"))
            return WireFormat.json(["status": "healthy"])
        } catch {
            return WireFormat.json(["status": "unhealthy"], status: .serviceUnavailable)
        }
    }

    func ready() -> Response {
        let ready = configuration.migrated() && coordinator.isReady
        return WireFormat.json(
            ["status": ready ? "ready" : "not ready", "replica_id": .string(coordinator.replicaID.rawValue)],
            status: ready ? .ok : .serviceUnavailable)
    }
}
