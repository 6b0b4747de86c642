import Foundation
import HTTPTypes
import Hummingbird
import LeaseholdCoordinator
import LeaseholdEngine
import LeaseholdStore
import NIOCore

extension LeaseholdAPI {
    /// The registered workflows, their schemas and graphs, and starting runs.
    func addWorkflowRoutes(to router: Router<BasicRequestContext>) {
        router.get("/workflows") { _, _ in WireFormat.json(["workflows": .array(registry.names.map(JSONValue.string))])
        }
        router.get("/workflows/{name}/schema") { _, context in
            let workflow = try registry.workflow(try name(context))
            return WireFormat.json(["start": workflow.startEvent.schema, "stop": workflow.stopEvent.schema])
        }
        router.get("/workflows/{name}/events") { _, context in
            let workflow = try registry.workflow(try name(context))
            let schemas = workflow.eventTypes.keys.sorted().compactMap { workflow.eventTypes[$0]?.schema }
            return WireFormat.json(["events": .array(schemas)])
        }
        router.get("/workflows/{name}/representation") { _, context in
            WireFormat.json(["graph": Representation.graph(try registry.workflow(try name(context)))])
        }
        router.post("/workflows/{name}/run") { request, context in
            let start = try await startRequest(request, context)
            let finished = try await coordinator.run(
                workflow: start.workflow, startEvent: start.event, handlerID: start.handlerID)
            return WireFormat.json(
                WireFormat.handler(finished), status: finished.status == .completed ? .ok : .internalServerError)
        }
        router.post("/workflows/{name}/run-nowait") { request, context in
            let start = try await startRequest(request, context)
            let record = try await coordinator.start(
                workflow: start.workflow, startEvent: start.event, handlerID: start.handlerID)
            return WireFormat.json(WireFormat.handler(record))
        }
    }

    /// The workflow, start event and handler id a `run` or `run-nowait` request asks for.
    func startRequest(_ request: Request, _ context: BasicRequestContext) async throws -> (
        workflow: String, event: JSONValue, handlerID: String?
    ) {
        let workflow = try registry.workflow(try name(context))
        let fields = try await body(request)
        if let contextValue = fields["context"], contextValue != .null, contextValue != [:] {
            throw APIError(
                .badRequest, "a non-empty 'context' is not supported: Leasehold restores state from its own snapshots")
        }
        var handlerID: String?
        switch fields["handler_id"] {
        case nil, .null?: handlerID = nil
        case .string(let text)?: handlerID = text
        default: throw APIError(.badRequest, "'handler_id' must be a string")
        }
        return (workflow.name, try startEvent(fields, workflow: workflow), handlerID)
    }

    /// The start event's fields: `start_event` as bare fields or as an envelope, else `kwargs`.
    func startEvent(_ fields: [String: JSONValue], workflow: Workflow) throws -> JSONValue {
        var raw = fields["start_event"] ?? .null
        if raw == .null { raw = fields["kwargs"] ?? [:] }
        if raw == .null { raw = [:] }
        if case .string = raw {
            raw = try WireFormat.event(from: raw).value
        }
        guard case .object(var object) = raw else { throw APIError(.badRequest, "'start_event' must be a JSON object") }
        if case .string(let type)? = object["type"], object["value"] != nil || object["data"] != nil {
            guard type == EventType.startEventName || type == workflow.startEvent.name else {
                throw APIError(.badRequest, "start_event type must be StartEvent, got '\(type)'")
            }
            return try WireFormat.event(from: raw).value
        }
        if object.count == 1, let inner = object["_data"]?.objectValue { object = inner }
        return .object(object)
    }
}
