import Foundation
import HTTPTypes
import Hummingbird
import LeaseholdCoordinator
import LeaseholdEngine
import LeaseholdStore
import Logging
import NIOCore
import Synchronization

/// The HTTP API of one replica: the LlamaIndex workflows server's routes plus Leasehold's own.
public struct LeaseholdAPI: Sendable {
    /// The replica's coordinator, which every route goes through.
    public let coordinator: Coordinator
    /// How the HTTP side behaves.
    public let configuration: ServerConfiguration
    let streams: StreamGate

    /// The API of `coordinator`'s replica, configured by `configuration`.
    public init(coordinator: Coordinator, configuration: ServerConfiguration) {
        self.coordinator = coordinator
        self.configuration = configuration
        self.streams = StreamGate(limit: configuration.maxStreams)
    }

    var store: any HandlerStore { coordinator.store }
    var registry: WorkflowRegistry { coordinator.registry }

    /// The router: one group of routes per concern, behind one middleware per concern (outermost
    /// first: request metrics, errors and 404/405, cross-site requests, authentication).
    public func router() -> Router<BasicRequestContext> {
        let router = Router(context: BasicRequestContext.self)
        router.add(middleware: RequestMetricsMiddleware())
        router.add(middleware: ErrorMiddleware())
        router.add(middleware: CrossSiteMiddleware())
        router.add(middleware: AuthMiddleware(apiKeys: configuration.apiKeys.map { Array($0.utf8) }))
        addOpsRoutes(to: router)
        addClusterRoutes(to: router)
        addWorkflowRoutes(to: router)
        addHandlerRoutes(to: router)
        addEventRoutes(to: router)
        return router
    }
}

extension LeaseholdAPI {
    /// The HTTP server as a `Service` (run it in the replica's `ServiceGroup`, after the coordinator).
    /// Idle keep-alive connections are closed after 60 s; open streams send heartbeats.
    public func application(logger: Logger) -> some ApplicationProtocol {
        Application(
            router: router(),
            server: .http1(configuration: .init(idleTimeout: .seconds(60))),
            configuration: .init(
                address: .hostname(configuration.host, port: configuration.port), serverName: "leasehold"),
            logger: logger)
    }
}
