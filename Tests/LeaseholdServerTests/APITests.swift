import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import LeaseholdCoordinator
import LeaseholdEngine
import LeaseholdSamples
import LeaseholdServer
import LeaseholdStore
import LeaseholdTestSupport
import Logging
import Testing

/// Runs the API on the in-memory store with a running coordinator.
func withAPI(
    _ configuration: ServerConfiguration = ServerConfiguration(maxBodyBytes: 4096, maxStreams: 2),
    _ body: @Sendable (any TestClientProtocol, Coordinator) async throws -> Void
) async throws {
    var logger = Logger(label: "api-test")
    logger.logLevel = .warning
    let coordinator = Coordinator(
        store: InMemoryStore(), registry: try Samples.registry(),
        configuration: CoordinatorConfiguration(replicaID: "t", address: "test", idleTimeout: nil), logger: logger)
    let api = LeaseholdAPI(coordinator: coordinator, configuration: configuration)
    let app = Application(router: api.router(), logger: logger)
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await coordinator.run() }
        defer { group.cancelAll() }
        try await app.test(.router) { client in try await body(client, coordinator) }
    }
}

func json(_ buffer: ByteBuffer) throws -> JSONValue {
    try JSONValue.parse(Data(buffer.readableBytesView))
}

func expectError(
    _ client: any TestClientProtocol, _ method: HTTPRequest.Method, _ uri: String, body: String? = nil,
    headers: HTTPFields = [:], status: HTTPResponse.Status, detail: String,
    sourceLocation: SourceLocation = #_sourceLocation
) async throws {
    try await client.execute(uri: uri, method: method, headers: headers, body: body.map { ByteBuffer(string: $0) }) {
        response in
        #expect(response.status == status, "\(method) \(uri)", sourceLocation: sourceLocation)
        #expect(response.headers[.contentType] == "application/json", sourceLocation: sourceLocation)
        let text = try json(response.body)["detail"]?.stringValue ?? ""
        #expect(text.contains(detail), "detail was: \(text)", sourceLocation: sourceLocation)
    }
}

@Suite("API bad input")
struct BadInputTests {
    @Test("run: malformed JSON, wrong types, unknown workflow, bad start values, context, handler id")
    func runBadInput() async throws {
        try await withAPI { client, _ in
            try await expectError(
                client, .post, "/workflows/echo/run", body: "{not json", status: .badRequest, detail: "not valid JSON")
            try await expectError(
                client, .post, "/workflows/echo/run", body: "[1,2]", status: .badRequest,
                detail: "must be a JSON object")
            try await expectError(
                client, .post, "/workflows/echo/run", body: "42", status: .badRequest, detail: "must be a JSON object")
            try await expectError(
                client, .post, "/workflows/nope/run", body: "{}", status: .notFound, detail: "workflow 'nope' not found"
            )
            try await expectError(
                client, .post, "/workflows/nope/run-nowait", body: "{}", status: .notFound, detail: "not found")
            try await expectError(
                client, .post, "/workflows/counter/run-nowait", body: #"{"start_event": {"count_to": "x"}}"#,
                status: .badRequest, detail: "field 'count_to' must be an integer")
            try await expectError(
                client, .post, "/workflows/counter/run-nowait", body: #"{"start_event": {"count_to": -3}}"#,
                status: .badRequest, detail: "must be ≥ 0")
            try await expectError(
                client, .post, "/workflows/echo/run-nowait", body: #"{"start_event": 5}"#,
                status: .badRequest, detail: "'start_event' must be a JSON object")
            try await expectError(
                client, .post, "/workflows/echo/run-nowait",
                body: #"{"start_event": {"type": "Tick", "value": {"message": "x"}}}"#,
                status: .badRequest, detail: "start_event type must be StartEvent")
            try await expectError(
                client, .post, "/workflows/echo/run-nowait",
                body: #"{"start_event": {"message": "x"}, "context": {"a": 1}}"#,
                status: .badRequest, detail: "non-empty 'context'")
            try await expectError(
                client, .post, "/workflows/echo/run-nowait",
                body: #"{"start_event": {"message": "x"}, "handler_id": 7}"#,
                status: .badRequest, detail: "'handler_id' must be a string")
            try await expectError(
                client, .post, "/workflows/echo/run-nowait",
                body: #"{"start_event": {"message": "x"}, "handler_id": "a b/c"}"#,
                status: .badRequest, detail: "URL-safe")
        }
    }

    @Test("run: a handler id that exists answers 409 and changes nothing")
    func duplicateHandler() async throws {
        try await withAPI { client, _ in
            let body = ByteBuffer(string: #"{"start_event": {"request": "x"}, "handler_id": "dup"}"#)
            try await client.execute(uri: "/workflows/approval/run-nowait", method: .post, body: body) {
                response throws in #expect(response.status == .ok)
            }
            try await expectError(
                client, .post, "/workflows/approval/run-nowait",
                body: #"{"start_event": {"request": "y"}, "handler_id": "dup"}"#,
                status: .conflict, detail: "already exists")
            try await client.execute(uri: "/handlers/dup", method: .get) { response in
                #expect(response.status == .accepted)
                let record = try json(response.body)
                #expect(record["workflow_name"] == "approval")
            }
        }
    }

    @Test("send event: missing, not an object, no type, unknown type, bad value, unknown handler, finished")
    func sendEventBadInput() async throws {
        try await withAPI { client, _ in
            try await client.execute(
                uri: "/workflows/approval/run-nowait", method: .post,
                body: ByteBuffer(string: #"{"start_event": {"request": "x"}, "handler_id": "h"}"#)
            ) { response throws in #expect(response.status == .ok) }
            try await expectError(
                client, .post, "/events/h", body: "{}", status: .badRequest, detail: "Event data is required")
            try await expectError(
                client, .post, "/events/h", body: "{bad", status: .badRequest, detail: "not valid JSON")
            try await expectError(
                client, .post, "/events/h", body: #"{"event": [1]}"#, status: .badRequest,
                detail: "must be a JSON object")
            try await expectError(
                client, .post, "/events/h", body: #"{"event": {"value": {}}}"#, status: .badRequest,
                detail: "string 'type'")
            try await expectError(
                client, .post, "/events/h", body: #"{"event": "not json"}"#, status: .badRequest, detail: "not JSON")
            try await expectError(
                client, .post, "/events/h",
                body: #"{"event": {"type": "HumanResponseEvent", "value": {"response": "a\u0000b"}}}"#,
                status: .badRequest, detail: "must not contain")
            // The same as a JSON string: the escape is one level down, the character there after parsing.
            try await expectError(
                client, .post, "/events/h",
                body: #"{"event": "{\"type\": \"HumanResponseEvent\", \"value\": {\"response\": \"a\\u0000b\"}}"}"#,
                status: .badRequest, detail: "must not contain")
            try await expectError(
                client, .post, "/workflows/echo/run",
                body: #"{"start_event": "{\"type\": \"StartEvent\", \"value\": {\"message\": \"a\\u0000b\"}}"}"#,
                status: .badRequest, detail: "must not contain")
            try await expectError(
                client, .post, "/events/h", body: #"{"event": {"type": "Tick", "value": {"n": 1}}}"#,
                status: .badRequest, detail: "not an event of workflow 'approval'")
            try await expectError(
                client, .post, "/events/h",
                body: #"{"event": {"type": "HumanResponseEvent", "value": {"response": 3}}}"#,
                status: .badRequest, detail: "field 'response' must be a string")
            try await expectError(
                client, .post, "/events/h",
                body: #"{"event": {"type": "HumanResponseEvent", "value": {"response": "y"}}, "step": 5}"#,
                status: .badRequest, detail: "'step' must be a string")
            try await expectError(
                client, .post, "/events/nope",
                body: #"{"event": {"type": "HumanResponseEvent", "value": {"response": "y"}}}"#,
                status: .notFound, detail: "Handler not found")
            // An event valid for another workflow (approval's answer) sent to a counter: refused by
            // the append itself, which finds the handler's workflow is not among the event's.
            try await client.execute(
                uri: "/workflows/counter/run-nowait", method: .post,
                body: ByteBuffer(string: #"{"start_event": {"count_to": 1000, "tick_ms": 1000}, "handler_id": "c"}"#)
            ) { response throws in #expect(response.status == .ok) }
            try await expectError(
                client, .post, "/events/c",
                body: #"{"event": {"type": "HumanResponseEvent", "value": {"response": "y"}}}"#,
                status: .badRequest, detail: "not an event of workflow 'counter'")
            // Nothing accepted before was lost: the handler still waits and takes a good event.
            try await client.execute(
                uri: "/events/h", method: .post,
                body: ByteBuffer(
                    string: #"{"event": "{\"type\": \"HumanResponseEvent\", \"data\": {\"response\": \"y\"}}"}"#)
            ) { response throws in #expect(response.status == .ok) }
            #expect(
                await eventually {
                    (try? await client.execute(uri: "/handlers/h", method: .get) { $0.status }) == .ok
                })
            try await expectError(
                client, .post, "/events/h",
                body: #"{"event": {"type": "HumanResponseEvent", "value": {"response": "y"}}}"#,
                status: .conflict, detail: "already completed")
        }
    }

    @Test("streams: bad after_sequence, bad booleans, unknown handler, too many streams")
    func streamBadInput() async throws {
        try await withAPI { client, _ in
            try await client.execute(
                uri: "/workflows/approval/run-nowait", method: .post,
                body: ByteBuffer(string: #"{"start_event": {"request": "x"}, "handler_id": "s"}"#)
            ) { response throws in #expect(response.status == .ok) }
            try await expectError(
                client, .get, "/events/s?after_sequence=abc", status: .badRequest, detail: "after_sequence must be")
            try await expectError(
                client, .get, "/events/s?after_sequence=-5", status: .badRequest, detail: "after_sequence must be")
            try await expectError(
                client, .get, "/events/s?sse=maybe", status: .badRequest, detail: "'sse' must be true or false")
            try await expectError(
                client, .get, "/events/s?include_internal=2", status: .badRequest, detail: "true or false")
            try await expectError(client, .get, "/events/missing", status: .notFound, detail: "Handler not found")
        }
    }

    @Test("handlers: unknown status filter, unknown handler, cancel of unknown, bad purge")
    func handlersBadInput() async throws {
        try await withAPI { client, _ in
            try await expectError(
                client, .get, "/handlers?status=sleeping", status: .badRequest, detail: "unknown status 'sleeping'")
            try await client.execute(uri: "/handlers?status=&workflow_name=", method: .get) { response in
                #expect(response.status == .ok)
                let list = try json(response.body)
                #expect(list["handlers"] == [])
            }
            try await expectError(client, .get, "/handlers/none", status: .notFound, detail: "Handler not found")
            try await expectError(client, .get, "/handlers/a%00b", status: .notFound, detail: "Handler not found")
            try await expectError(client, .get, "/handlers?workflow_name=a%00b", status: .badRequest, detail: "NUL")
            try await expectError(client, .get, "/results/none", status: .notFound, detail: "Handler not found")
            try await expectError(
                client, .post, "/handlers/none/cancel", status: .notFound, detail: "Handler not found")
            try await expectError(
                client, .post, "/handlers/none/cancel?purge=perhaps", status: .badRequest, detail: "'purge'")
            try await expectError(
                client, .get, "/cluster/handlers/none", status: .notFound, detail: "Handler not found")
            try await expectError(client, .get, "/cluster/history?limit=lots", status: .badRequest, detail: "limit")
            try await expectError(client, .get, "/cluster/history?limit=0", status: .badRequest, detail: "limit")
            try await expectError(client, .get, "/cluster/history?limit=1001", status: .badRequest, detail: "limit")
            try await expectError(client, .get, "/workflows/none/schema", status: .notFound, detail: "not found")
            try await expectError(client, .get, "/workflows/none/events", status: .notFound, detail: "not found")
            try await expectError(
                client, .get, "/workflows/none/representation", status: .notFound, detail: "not found")
        }
    }

    @Test("unknown routes → 404 JSON, wrong methods → 405 JSON with Allow, oversized bodies → 413")
    func routingErrors() async throws {
        try await withAPI { client, _ in
            try await expectError(client, .get, "/no/such/route", status: .notFound, detail: "Not Found")
            try await expectError(client, .delete, "/handlers", status: .methodNotAllowed, detail: "Method Not Allowed")
            try await client.execute(uri: "/workflows/echo/run", method: .get) { response in
                #expect(response.status == .methodNotAllowed)
                #expect(response.headers[.allow] == "POST")
            }
            let big = #"{"start_event": {"message": ""# + String(repeating: "x", count: 5000) + #""}}"#
            try await expectError(
                client, .post, "/workflows/echo/run-nowait", body: big, status: .contentTooLarge,
                detail: "larger than 4096")
            try await client.execute(uri: "/handlers", method: .get) { response in
                let list = try json(response.body)
                #expect(list["handlers"] == [])
            }
        }
    }

    @Test("API key: missing or wrong → 401 JSON; health, ready and metrics stay open")
    func apiKey() async throws {
        try await withAPI(ServerConfiguration(apiKeys: ["s3cret", "other"])) { client, _ in
            try await expectError(client, .get, "/workflows", status: .unauthorized, detail: "API key")
            try await expectError(
                client, .get, "/workflows", headers: [.authorization: "Bearer wrong"], status: .unauthorized,
                detail: "API key")
            try await expectError(
                client, .get, "/workflows", headers: [.authorization: "Basic s3cret"], status: .unauthorized,
                detail: "API key")
            try await client.execute(uri: "/workflows", method: .get, headers: [.authorization: "Bearer s3cret"]) {
                response throws in #expect(response.status == .ok)
            }
            try await client.execute(uri: "/workflows", method: .get, headers: [.authorization: "Bearer other"]) {
                response throws in #expect(response.status == .ok)
            }
            // A browser: HTTP Basic, any user name, the key as the password; the page asks for it.
            try await client.execute(
                uri: "/cluster", method: .get, headers: [.authorization: "Basic b3BlcmF0b3I6czNjcmV0"]
            ) { response throws in #expect(response.status == .ok) }
            try await expectError(
                client, .get, "/cluster", headers: [.authorization: "Basic b3BlcmF0b3I6d3Jvbmc="],
                status: .unauthorized,
                detail: "API key")
            try await client.execute(uri: "/", method: .get) { response throws in
                #expect(response.status == .unauthorized)
                #expect(response.headers[values: .wwwAuthenticate].contains { $0.hasPrefix("Basic realm=") })
            }
            try await client.execute(uri: "/workflows", method: .get) { response throws in
                #expect(response.headers[values: .wwwAuthenticate].first == "Bearer")
            }
            for open in ["/health", "/ready", "/metrics"] {
                try await client.execute(uri: open, method: .get) { response throws in
                    #expect(response.status != .unauthorized, "\(open)")
                }
            }
            // The browser's Basic credentials never authorize a change; the Bearer key does.
            try await expectError(
                client, .post, "/workflows/echo/run-nowait", body: #"{"start_event": {"message": "m"}}"#,
                headers: [.authorization: "Basic b3BlcmF0b3I6czNjcmV0"], status: .unauthorized, detail: "API key")
            try await client.execute(
                uri: "/workflows/echo/run-nowait", method: .post, headers: [.authorization: "Bearer s3cret"],
                body: ByteBuffer(string: #"{"start_event": {"message": "m"}}"#)
            ) { response throws in #expect(response.status == .ok) }
        }
    }

    @Test("cross-site requests: a foreign Origin or Sec-Fetch-Site → 403, a form's body type → 415; reads open")
    func crossSite() async throws {
        try await withAPI { client, _ in
            let body = #"{"start_event": {"message": "m"}, "handler_id": "csrf"}"#
            let foreign = HTTPField.Name("Origin")!
            let site = HTTPField.Name("Sec-Fetch-Site")!
            try await expectError(
                client, .post, "/workflows/echo/run-nowait", body: body, headers: [foreign: "https://evil.example"],
                status: .forbidden, detail: "cross-origin request refused")
            try await expectError(
                client, .post, "/workflows/echo/run-nowait", body: body, headers: [site: "cross-site"],
                status: .forbidden, detail: "cross-site request refused")
            try await expectError(
                client, .post, "/workflows/echo/run-nowait", body: body, headers: [foreign: "null"],
                status: .forbidden, detail: "cross-origin request refused")
            for formType in ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain"] {
                let browser: HTTPFields = [.contentType: formType, site: "same-origin"]
                try await expectError(
                    client, .post, "/workflows/echo/run-nowait", body: body, headers: browser,
                    status: .unsupportedMediaType, detail: "must be JSON")
                try await expectError(
                    client, .post, "/handlers/csrf/cancel", headers: browser, status: .unsupportedMediaType,
                    detail: "must be JSON")
            }
            // Nothing was started by any of those.
            try await expectError(client, .get, "/handlers/csrf", status: .notFound, detail: "not found")
            // What API clients send passes: JSON (with parameters), no Origin, or the same origin.
            try await client.execute(
                uri: "/workflows/echo/run-nowait", method: .post,
                headers: [.contentType: "application/json; charset=utf-8", site: "same-origin"],
                body: ByteBuffer(string: body)
            ) { response throws in #expect(response.status == .ok) }
            // curl -d sends a form's type, and no browser header: an API client, not refused.
            try await client.execute(
                uri: "/handlers/csrf/cancel", method: .post,
                headers: [.contentType: "application/x-www-form-urlencoded"]
            ) { response throws in #expect(response.status == .ok) }
            // Reads stay open to the page whatever their origin.
            try await client.execute(uri: "/handlers/csrf", method: .get, headers: [site: "cross-site"]) {
                response throws in #expect(response.status != .forbidden)
            }
        }
    }
}

@Suite("API contract")
struct ContractTests {
    @Test("handler record: every key present, null where empty; 202 while running")
    func handlerRecord() async throws {
        try await withAPI { client, _ in
            try await client.execute(
                uri: "/workflows/approval/run-nowait", method: .post,
                body: ByteBuffer(string: #"{"start_event": {"request": "x"}, "handler_id": "rec"}"#)
            ) { response in
                let record = try json(response.body)
                for key in [
                    "handler_id", "workflow_name", "run_id", "status", "error", "result", "started_at", "updated_at",
                    "completed_at", "result_unreadable",
                ] {
                    #expect(record[key] != nil, "missing \(key)")
                }
                #expect(record["status"] == "running")
                #expect(record["result"] == .null)
                #expect(record["started_at"]?.stringValue?.hasSuffix("+00:00") == true)
            }
            try await client.execute(uri: "/handlers/rec", method: .get) { response throws in
                #expect(response.status == .accepted)
            }
        }
    }

    @Test("NDJSON stream and Last-Event-ID resume; 204 when finished and nothing is left")
    func streams() async throws {
        try await withAPI { client, _ in
            try await client.execute(
                uri: "/workflows/counter/run", method: .post,
                body: ByteBuffer(string: #"{"start_event": {"count_to": 3}}"#)
            ) { response in
                let id = try json(response.body)["handler_id"]?.stringValue ?? ""
                try await client.execute(uri: "/events/\(id)?sse=false&after_sequence=-1", method: .get) { stream in
                    #expect(stream.headers[.contentType] == "application/x-ndjson")
                    let lines = String(buffer: stream.body).split(separator: "\n")
                    let types = try lines.map { try JSONValue.parse(String($0))["type"]?.stringValue ?? "" }
                    #expect(types == ["Tick", "Tick", "Tick", "StopEvent"])
                }
                try await client.execute(
                    uri: "/events/\(id)?after_sequence=-1", method: .get,
                    headers: [HTTPField.Name("Last-Event-ID")!: "5"]
                ) { stream in
                    let text = String(buffer: stream.body)
                    #expect(!text.contains("id: 5\n"))
                    #expect(text.contains("id: 8\n"))
                }
                try await client.execute(uri: "/events/\(id)?after_sequence=now", method: .get) { response throws in
                    #expect(response.status == .noContent)
                }
            }
        }
    }

    @Test("openapi.json documents exactly the router's routes")
    func openAPIMatchesRoutes() async throws {
        try await withAPI { client, coordinator in
            let api = LeaseholdAPI(coordinator: coordinator, configuration: ServerConfiguration())
            let router = api.router()
            try await client.execute(uri: "/openapi.json", method: .get) { response in
                let document = try json(response.body)
                #expect(document["openapi"] == "3.1.0")
                var documented = Set<String>()
                for (path, operations) in document["paths"]?.objectValue ?? [:] {
                    for method in (operations.objectValue ?? [:]).keys {
                        documented.insert("\(method.uppercased()) \(path)")
                    }
                }
                var routed = Set<String>()
                for route in router.routes {
                    routed.insert(
                        "\(route.method.rawValue) \(route.path.description.hasPrefix("/") ? "" : "/")\(route.path.description)"
                    )
                }
                #expect(documented == routed)
            }
        }
    }

    @Test("cluster view and a handler's lease")
    func cluster() async throws {
        try await withAPI { client, _ in
            try await client.execute(
                uri: "/workflows/approval/run-nowait", method: .post,
                body: ByteBuffer(string: #"{"start_event": {"request": "x"}, "handler_id": "cl"}"#)
            ) { _ in }
            try await client.execute(uri: "/cluster", method: .get) { response in
                let view = try json(response.body)
                #expect(view["replica_id"] == "t")
                #expect(view["replicas"]?.arrayValue?.first?["alive"] == true)
                #expect(view["handlers"]?["running"] == 1)
            }
            try await client.execute(uri: "/cluster/handlers/cl", method: .get) { response in
                let lease = try json(response.body)
                #expect(lease["owner"] == "t")
                #expect((lease["fencing_token"]?.intValue ?? 0) >= 1)
                #expect(lease["hibernated"] == false)
                #expect(lease["inbox_pending"]?.intValue != nil)
                let history = lease["lease_history"]?.arrayValue ?? []
                #expect(history.map { $0["change"] } == ["created"])
                #expect(history.first?["replica"] == "t")
                #expect(history.first?["fencing_token"] == lease["fencing_token"])
            }
            try await client.execute(uri: "/handlers/cl/cancel", method: .post) { _ in }
            try await client.execute(uri: "/cluster/history?limit=1", method: .get) { response in
                let changes = try json(response.body)["changes"]?.arrayValue ?? []
                #expect(changes.count == 1)
                #expect(changes.first?["change"] == "cancelled")
                #expect(changes.first?["handler_id"] == "cl")
            }
            try await client.execute(uri: "/", method: .get) { response in
                #expect(String(buffer: response.body).contains("Leasehold cluster"))
            }
        }
    }
}
