import Foundation
import HTTPTypes
import Hummingbird
import LeaseholdCoordinator
import LeaseholdEngine
import LeaseholdStore
import NIOCore

extension LeaseholdAPI {
    /// Handler records, results and cancellation.
    func addHandlerRoutes(to router: Router<BasicRequestContext>) {
        router.get("/handlers") { request, _ in try await listHandlers(request) }
        router.get("/handlers/{handler_id}") { _, context in try await handlerResponse(try id(context), bare: false) }
        router.get("/results/{handler_id}") { _, context in try await handlerResponse(try id(context), bare: true) }
        router.post("/handlers/{handler_id}/cancel") { request, context in
            let purge = try flag(request, "purge", default: false)
            guard try await coordinator.cancel(try id(context), purge: purge) else {
                throw APIError(.notFound, "Handler not found")
            }
            return WireFormat.json(["status": purge ? "deleted" : "cancelled"])
        }
        router.post("/handlers/{handler_id}/release") { _, context in
            let id = try id(context)
            guard try await coordinator.releaseQuarantine(id) else {
                guard try await store.handler(id) != nil else { throw APIError(.notFound, "Handler not found") }
                throw APIError(.conflict, "handler '\(id)' is not quarantined")
            }
            return WireFormat.json(["status": "released"])
        }
    }

    func listHandlers(_ request: Request) async throws -> Response {
        let query = request.uri.queryParameters
        var statuses: [HandlerStatus] = []
        for text in query.getAll("status") where !text.isEmpty {
            guard let status = HandlerStatus(rawValue: String(text)) else {
                throw APIError(.badRequest, "unknown status '\(text)'; use running, completed, failed or cancelled")
            }
            statuses.append(status)
        }
        let workflows = query.getAll("workflow_name").filter { !$0.isEmpty }.map { String($0) }
        if workflows.contains(where: { $0.contains("\u{0}") }) {
            throw APIError(.badRequest, "workflow_name must not contain NUL characters")
        }
        let records = try await store.handlers(HandlerFilter(statuses: statuses, workflows: workflows))
        return WireFormat.json(["handlers": .array(records.map { WireFormat.handler($0) })])
    }

    func handlerResponse(_ id: HandlerID, bare: Bool) async throws -> Response {
        guard let record = try await store.handler(id) else { throw APIError(.notFound, "Handler not found") }
        let status: HTTPResponse.Status =
            switch record.status {
            case .running: .accepted
            case .completed: .ok
            case .failed, .cancelled: .internalServerError
            }
        return WireFormat.json(WireFormat.handler(record, bareResult: bare), status: status)
    }
}
