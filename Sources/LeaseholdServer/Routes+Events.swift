import Foundation
import HTTPTypes
import Hummingbird
import LeaseholdCoordinator
import LeaseholdEngine
import LeaseholdStore
import NIOCore

extension LeaseholdAPI {
    /// Sending events to a handler and streaming its events (`stream` in Streams.swift).
    func addEventRoutes(to router: Router<BasicRequestContext>) {
        router.post("/events/{handler_id}") { request, context in try await sendEvent(request, context) }
        router.get("/events/{handler_id}") { request, context in try await stream(request, context) }
    }

    func sendEvent(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let handlerID = try id(context)
        let fields = try await body(request)
        guard let raw = fields["event"], raw != .null else { throw APIError(.badRequest, "Event data is required") }
        if let step = fields["step"], step != .null, step.stringValue == nil {
            throw APIError(.badRequest, "'step' must be a string")
        }
        let event = try WireFormat.event(from: raw)
        try await coordinator.send(event, to: handlerID)
        return WireFormat.json(["status": "sent"])
    }
}
