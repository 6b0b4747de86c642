import Foundation
import HTTPTypes
import LeaseholdEngine

/// `GET /openapi.json`: an OpenAPI 3.1 document built from `Routes.all`.
enum OpenAPI {
    static let error: JSONValue = ["$ref": "#/components/schemas/Error"]
    static let handler: JSONValue = ["$ref": "#/components/schemas/HandlerData"]

    static func document() -> JSONValue {
        var paths: [String: JSONValue] = [:]
        for route in Routes.all {
            var operations = paths[route.path]?.objectValue ?? [:]
            operations[route.method.rawValue.lowercased()] = operation(route)
            paths[route.path] = .object(operations)
        }
        return [
            "openapi": "3.1.0",
            "info": [
                "title": "Leasehold", "version": "0.1.0",
                "description": "Wire-compatible with the LlamaIndex workflows server; plus cluster routes.",
            ],
            "paths": .object(paths),
            "components": ["schemas": schemas, "securitySchemes": ["bearer": ["type": "http", "scheme": "bearer"]]],
        ]
    }

    static func operation(_ route: RouteSpec) -> JSONValue {
        var parameters: [JSONValue] = []
        for part in route.path.split(separator: "/") where part.hasPrefix("{") {
            let name = String(part.dropFirst().dropLast())
            parameters.append([
                "name": .string(name), "in": "path", "required": true,
                "schema": ["type": "string", "minLength": 1, "pattern": "^[A-Za-z0-9_.~-]+$"],
            ])
        }
        for name in route.query {
            let schema: JSONValue =
                switch name {
                case "purge", "sse", "include_internal", "include_qualified_name": ["type": "boolean"]
                case "after_sequence": ["oneOf": [["type": "integer", "minimum": -1], ["const": "now"]]]
                case "status": ["type": "array", "items": ["enum": ["running", "completed", "failed", "cancelled"]]]
                default: ["type": "array", "items": ["type": "string"]]
                }
            parameters.append(["name": .string(name), "in": "query", "required": false, "schema": schema])
        }
        var responses: [String: JSONValue] = [:]
        // Every state-changing route refuses what another web site can make a browser send
        // (`CrossSiteMiddleware`): 403 for a cross-site sender, 415 for a form's body type.
        let codes = route.responses + (CrossSiteMiddleware.isSafe(route.method) ? [] : [403, 415])
        for code in codes {
            responses[String(code)] = response(route, code)
        }
        var operation: [String: JSONValue] = [
            "summary": .string(route.summary),
            "operationId": .string(
                route.method.rawValue.lowercased()
                    + route.path
                    .replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "{", with: "")
                    .replacingOccurrences(of: "}", with: "").replacingOccurrences(of: "-", with: "_")
                    .replacingOccurrences(of: ".", with: "_")),
            "parameters": .array(parameters),
            "responses": .object(responses),
        ]
        if route.method == .post, let body = requestBody(route.path) { operation["requestBody"] = body }
        if !route.isPublic { operation["security"] = [[:], ["bearer": []]] }
        return .object(operation)
    }

    static func requestBody(_ path: String) -> JSONValue? {
        if path.hasSuffix("/run") || path.hasSuffix("/run-nowait") {
            return [
                "required": false,
                "content": ["application/json": ["schema": ["$ref": "#/components/schemas/RunRequest"]]],
            ]
        }
        if path.hasPrefix("/events/") {
            return [
                "required": true,
                "content": ["application/json": ["schema": ["$ref": "#/components/schemas/SendEventRequest"]]],
            ]
        }
        return nil
    }

    static func json(_ schema: JSONValue, _ description: String) -> JSONValue {
        ["description": .string(description), "content": ["application/json": ["schema": schema]]]
    }

    static func response(_ route: RouteSpec, _ code: Int) -> JSONValue {
        if code >= 400 { return json(error, "error") }
        switch (route.path, code) {
        case ("/", _): return ["description": "HTML page", "content": ["text/html": ["schema": ["type": "string"]]]]
        case ("/metrics", _):
            return ["description": "Prometheus text", "content": ["text/plain": ["schema": ["type": "string"]]]]
        case ("/events/{handler_id}", 204): return ["description": "finished, nothing after the cursor"]
        case ("/events/{handler_id}", _):
            return [
                "description": "events",
                "content": [
                    "text/event-stream": ["schema": ["type": "string"]],
                    "application/x-ndjson": ["schema": ["type": "string"]],
                ],
            ]
        case ("/health", _):
            return json(
                [
                    "type": "object", "required": ["status"],
                    "properties": ["status": ["enum": ["healthy", "unhealthy"]]],
                ], "health")
        case ("/handlers", _):
            return json(
                [
                    "type": "object", "required": ["handlers"],
                    "properties": ["handlers": ["type": "array", "items": handler]],
                ], "handlers")
        case ("/handlers/{handler_id}", _), ("/results/{handler_id}", _), ("/workflows/{name}/run", _),
            ("/workflows/{name}/run-nowait", _):
            return json(route.path.hasPrefix("/results") ? ["type": "object"] : handler, "handler")
        case ("/events/{handler_id}", _), ("/handlers/{handler_id}/cancel", _):
            return json(
                ["type": "object", "required": ["status"], "properties": ["status": ["type": "string"]]], "status")
        case ("/workflows", _):
            return json(
                [
                    "type": "object", "required": ["workflows"],
                    "properties": ["workflows": ["type": "array", "items": ["type": "string"]]],
                ], "names")
        default:
            return json(["type": "object"], route.summary)
        }
    }

    static let schemas: JSONValue = [
        "Error": ["type": "object", "required": ["detail"], "properties": ["detail": ["type": "string"]]],
        "EventEnvelope": [
            "type": "object", "required": ["value", "type", "types", "qualified_name"],
            "properties": [
                "value": ["type": "object"], "type": ["type": "string"],
                "types": ["type": ["array", "null"], "items": ["type": "string"]],
                "qualified_name": ["type": ["string", "null"]],
            ],
        ],
        "HandlerData": [
            "type": "object",
            "required": [
                "handler_id", "workflow_name", "run_id", "status", "error", "result", "started_at", "updated_at",
                "completed_at",
            ],
            "properties": [
                "handler_id": ["type": "string"], "workflow_name": ["type": "string"],
                "run_id": ["type": ["string", "null"]],
                "status": ["enum": ["running", "completed", "failed", "cancelled"]],
                "error": ["type": ["string", "null"]],
                "result": ["oneOf": [["$ref": "#/components/schemas/EventEnvelope"], ["type": "null"]]],
                "result_unreadable": ["type": "boolean"],
                "started_at": ["type": "string"], "updated_at": ["type": ["string", "null"]],
                "completed_at": ["type": ["string", "null"]],
            ],
        ],
        "RunRequest": [
            "type": "object",
            "properties": [
                "start_event": ["type": "object"], "handler_id": ["type": "string"],
                "context": ["type": "object"], "kwargs": ["type": "object"],
            ],
        ],
        "SendEventRequest": [
            "type": "object", "required": ["event"],
            "properties": [
                "event": [
                    "oneOf": [
                        [
                            "type": "object", "required": ["type"],
                            "properties": ["type": ["type": "string"], "value": ["type": "object"]],
                        ], ["type": "string"],
                    ]
                ],
                "step": ["type": "string"],
            ],
        ],
    ]
}
