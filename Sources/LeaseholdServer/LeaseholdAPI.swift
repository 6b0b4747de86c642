import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import LeaseholdCoordinator
import LeaseholdEngine
import LeaseholdStore
import Logging
import Synchronization

/// The HTTP API of one replica: the LlamaIndex workflows server's routes plus Leasehold's own.
public struct LeaseholdAPI: Sendable {
    public let coordinator: Coordinator
    public let configuration: ServerConfiguration
    let streams: StreamGate

    public init(coordinator: Coordinator, configuration: ServerConfiguration) {
        self.coordinator = coordinator
        self.configuration = configuration
        self.streams = StreamGate(limit: configuration.maxStreams)
    }

    var store: any HandlerStore { coordinator.store }
    var registry: WorkflowRegistry { coordinator.registry }

    public func router() -> Router<BasicRequestContext> {
        let router = Router(context: BasicRequestContext.self)
        router.add(middleware: APIMiddleware(apiKeys: configuration.apiKeys.map { Array($0.utf8) }))
        router.get("/health") { _, _ in try await health() }
        router.get("/ready") { _, _ in ready() }
        router.get("/metrics") { _, _ in
            Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                body: ResponseBody(byteBuffer: ByteBuffer(string: configuration.metricsText())))
        }
        router.get("/openapi.json") { _, _ in WireFormat.json(OpenAPI.document()) }
        router.get("/") { _, _ in ClusterPage.response() }
        router.get("/cluster") { _, _ in try await cluster() }
        router.get("/cluster/handlers/{handler_id}") { _, context in try await clusterHandler(try id(context)) }
        router.get("/workflows") { _, _ in WireFormat.json(["workflows": .array(registry.names.map(JSONValue.string))]) }
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
            let record = try await start(request, context)
            let finished = try await coordinator.awaitCompletion(record.id)
            return WireFormat.json(WireFormat.handler(finished), status: finished.status == .completed ? .ok : .internalServerError)
        }
        router.post("/workflows/{name}/run-nowait") { request, context in
            WireFormat.json(WireFormat.handler(try await start(request, context)))
        }
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
        router.post("/events/{handler_id}") { request, context in try await sendEvent(request, context) }
        router.get("/events/{handler_id}") { request, context in try await stream(request, context) }
        return router
    }

    // MARK: - Parameters

    func id(_ context: BasicRequestContext) throws -> HandlerID {
        guard let text = context.parameters.get("handler_id") else { throw APIError(.badRequest, "handler id missing") }
        // Every id the server ever made or accepted is URL-safe; anything else cannot exist.
        guard HandlerID.isValid(text) else { throw APIError(.notFound, "Handler not found") }
        return HandlerID(text)
    }

    func name(_ context: BasicRequestContext) throws -> String {
        guard let text = context.parameters.get("name") else { throw APIError(.badRequest, "workflow name missing") }
        return text
    }

    func flag(_ request: Request, _ name: String, default value: Bool) throws -> Bool {
        guard let text = request.uri.queryParameters.get(name), !text.isEmpty else { return value }
        switch text.lowercased() {
        case "true", "1", "yes", "on": return true
        case "false", "0", "no", "off": return false
        default: throw APIError(.badRequest, "query parameter '\(name)' must be true or false, got '\(text)'")
        }
    }

    func body(_ request: Request) async throws -> [String: JSONValue] {
        var request = request
        let buffer: ByteBuffer
        do {
            buffer = try await request.collectBody(upTo: configuration.maxBodyBytes)
        } catch let error as HTTPError where error.status == .contentTooLarge {
            throw APIError(.contentTooLarge, "request body is larger than \(configuration.maxBodyBytes) bytes")
        } catch is NIOTooManyBytesError {
            throw APIError(.contentTooLarge, "request body is larger than \(configuration.maxBodyBytes) bytes")
        }
        return try WireFormat.object(buffer)
    }

    // MARK: - Health

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

    // MARK: - Runs and handlers

    func start(_ request: Request, _ context: BasicRequestContext) async throws -> HandlerRecord {
        let workflow = try registry.workflow(try name(context))
        let fields = try await body(request)
        if let contextValue = fields["context"], contextValue != .null, contextValue != [:] {
            throw APIError(.badRequest, "a non-empty 'context' is not supported: Leasehold restores state from its own snapshots")
        }
        var handlerID: String?
        switch fields["handler_id"] {
        case nil, .null?: handlerID = nil
        case .string(let text)?: handlerID = text
        default: throw APIError(.badRequest, "'handler_id' must be a string")
        }
        let startValue = try startEvent(fields, workflow: workflow)
        return try await coordinator.start(workflow: workflow.name, startEvent: startValue, handlerID: handlerID)
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

    // MARK: - Cluster

    func cluster() async throws -> Response {
        let ttl = coordinator.configuration.leaseTTL
        async let replicas = store.replicas(aliveWithin: ttl)
        async let counts = store.counts()
        let fences = coordinator.fenceCounts
        let (replicaList, handlerCounts) = try await (replicas, counts)
        return WireFormat.json([
            "replica_id": .string(coordinator.replicaID.rawValue),
            "replicas": .array(replicaList.map { replica in
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
            "fencing": ["self_fences": .int(fences.selfFences), "rejected_writes": .int(fences.rejectedWrites)],
        ])
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
        ])
    }
}

/// Counts open streams so one replica cannot be exhausted by readers.
final class StreamGate: Sendable {
    let limit: Int
    private let open = Mutex(0)

    init(limit: Int) { self.limit = limit }

    func enter() -> Bool {
        open.withLock { count in
            guard count < limit else { return false }
            count += 1
            return true
        }
    }

    func leave() { open.withLock { $0 -= 1 } }
    var count: Int { open.withLock { $0 } }
}

extension LeaseholdAPI {
    /// The HTTP server as a `Service` (run it in the replica's `ServiceGroup`, after the coordinator).
    /// Idle keep-alive connections are closed after 60 s; open streams send heartbeats.
    public func application(logger: Logger) -> some ApplicationProtocol {
        Application(
            router: router(),
            server: .http1(configuration: .init(idleTimeout: .seconds(60))),
            configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "leasehold"),
            logger: logger)
    }
}
