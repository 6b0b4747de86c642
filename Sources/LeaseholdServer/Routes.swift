import HTTPTypes

/// Every route of the API, as a table: the router is built from it, 405 answers come from it,
/// and `/openapi.json` describes it, so the three cannot disagree.
struct RouteSpec: Sendable {
    var method: HTTPRequest.Method
    var path: String
    var summary: String
    var isPublic: Bool = false
    var query: [String] = []
    var responses: [Int]
}

enum Routes {
    static let all: [RouteSpec] = [
        RouteSpec(method: .get, path: "/health", summary: "Liveness", isPublic: true, responses: [200, 503]),
        RouteSpec(method: .get, path: "/ready", summary: "Readiness", isPublic: true, responses: [200, 503]),
        RouteSpec(method: .get, path: "/metrics", summary: "Prometheus metrics", isPublic: true, responses: [200]),
        RouteSpec(method: .get, path: "/openapi.json", summary: "This document", responses: [200]),
        RouteSpec(method: .get, path: "/", summary: "Cluster page", responses: [200]),
        RouteSpec(method: .get, path: "/cluster", summary: "Cluster view", responses: [200]),
        RouteSpec(
            method: .get, path: "/cluster/handlers/{handler_id}", summary: "Lease of one handler",
            responses: [200, 404]),
        RouteSpec(
            method: .get, path: "/cluster/history", summary: "Recent ownership changes", query: ["limit"],
            responses: [200, 400]),
        RouteSpec(method: .get, path: "/workflows", summary: "Registered workflows", responses: [200]),
        RouteSpec(
            method: .get, path: "/workflows/{name}/schema", summary: "Start and stop event schemas",
            responses: [200, 404]),
        RouteSpec(method: .get, path: "/workflows/{name}/events", summary: "Event schemas", responses: [200, 404]),
        RouteSpec(
            method: .get, path: "/workflows/{name}/representation", summary: "Workflow graph", responses: [200, 404]),
        RouteSpec(
            method: .post, path: "/workflows/{name}/run", summary: "Run and wait",
            responses: [200, 400, 404, 409, 413, 500]),
        RouteSpec(
            method: .post, path: "/workflows/{name}/run-nowait", summary: "Start a run",
            responses: [200, 400, 404, 409, 413]),
        RouteSpec(
            method: .get, path: "/handlers", summary: "List handlers", query: ["status", "workflow_name"],
            responses: [200, 400]),
        RouteSpec(
            method: .get, path: "/handlers/{handler_id}", summary: "One handler", responses: [200, 202, 404, 500]),
        RouteSpec(
            method: .post, path: "/handlers/{handler_id}/cancel", summary: "Cancel a handler", query: ["purge"],
            responses: [200, 400, 404]),
        RouteSpec(
            method: .post, path: "/handlers/{handler_id}/release", summary: "Release a quarantined handler",
            responses: [200, 404, 409]),
        RouteSpec(
            method: .get, path: "/results/{handler_id}", summary: "Deprecated handler result",
            responses: [200, 202, 404, 500]),
        RouteSpec(
            method: .post, path: "/events/{handler_id}", summary: "Send an event", responses: [200, 400, 404, 409, 413]),
        RouteSpec(
            method: .get, path: "/events/{handler_id}", summary: "Stream events",
            query: ["sse", "after_sequence", "include_internal", "include_qualified_name"],
            responses: [200, 204, 400, 404, 503]),
    ]

    /// The route template a concrete path matches, ignoring the method.
    static func templates(matching path: String) -> [RouteSpec] {
        let parts = path.split(separator: "/", omittingEmptySubsequences: true)
        return all.filter { route in
            let template = route.path.split(separator: "/", omittingEmptySubsequences: true)
            guard template.count == parts.count else { return false }
            return zip(template, parts).allSatisfy { $0.hasPrefix("{") || $0 == $1 }
        }
    }
}

extension Routes {
    /// The route a request is for: the template with its method, else the first template of the path.
    static func template(_ path: String, method: HTTPRequest.Method) -> RouteSpec? {
        let templates = templates(matching: path)
        return templates.first { $0.method == method } ?? templates.first
    }

    /// Whether the route needs no API key (health, readiness, metrics).
    static func isPublic(_ path: String, method: HTTPRequest.Method) -> Bool {
        template(path, method: method)?.isPublic ?? false
    }
}
