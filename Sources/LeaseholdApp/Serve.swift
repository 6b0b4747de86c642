import ArgumentParser
import CoreMetrics
import Foundation
import LeaseholdCoordinator
import LeaseholdEngine
import LeaseholdKit
import LeaseholdPostgres
import LeaseholdRuntime
import LeaseholdServer
import LeaseholdStore
import Logging
import Metrics
import Prometheus
import ServiceLifecycle
import Synchronization
import UnixSignals

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a replica: the HTTP API plus the coordinator.",
        discussion: "Every flag can also be set by its environment variable; the flag wins.")

    @Option(name: Settings.host.name, help: Settings.host.help) var host: String?
    @Option(name: Settings.port.name, help: Settings.port.help) var port: String?
    @OptionGroup var database: DatabaseOptions
    @Option(name: Settings.replicaID.name, help: Settings.replicaID.help) var replicaID: String?
    @Option(name: Settings.advertiseAddress.name, help: Settings.advertiseAddress.help) var advertiseAddress: String?
    @Option(name: Settings.leaseTTL.name, help: Settings.leaseTTL.help) var leaseTTL: String?
    @Option(name: Settings.idleTimeout.name, help: Settings.idleTimeout.help) var idleTimeout: String?
    @Option(name: Settings.apiKey.name, help: Settings.apiKey.help) var apiKey: String?
    @Option(name: Settings.apiKeyFile.name, help: Settings.apiKeyFile.help) var apiKeyFile: String?
    @Option(name: Settings.maxBody.name, help: Settings.maxBody.help) var maxBody: String?
    @Option(name: Settings.maxStreams.name, help: Settings.maxStreams.help) var maxStreams: String?
    @Option(name: Settings.streamStallTimeout.name, help: Settings.streamStallTimeout.help)
    var streamStallTimeout: String?
    @Option(name: Settings.retention.name, help: Settings.retention.help) var retention: String?
    @Option(name: Settings.batchMax.name, help: Settings.batchMax.help) var batchMax: String?
    @Option(name: Settings.batchLinger.name, help: Settings.batchLinger.help) var batchLinger: String?
    @Option(name: Settings.batchWriters.name, help: Settings.batchWriters.help) var batchWriters: String?
    @OptionGroup var logging: LogOptions

    @Flag(
        name: .customLong("unsafe-disable-self-fencing"),
        help: ArgumentHelp("Never stop handlers on a lapsed renewal (fencing tests only)", visibility: .private))
    var unsafeDisableSelfFencing = false

    // Long because it is the one composition root: settings, logging and metrics, the database,
    // crash containment, the application's pools, coordinator and HTTP, and the one service group
    // whose order decides shutdown. Split, the order would live in several places.
    func run() async throws {
        let settings: ServeSettings
        let logger: Logger
        do {
            logger = try logging.bootstrap()
            settings = try ServeSettings(self, ProcessInfo.processInfo.environment)
        } catch let error as BadSetting {
            throw fail(error.message)
        }
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        logger.info(
            "starting",
            metadata: [
                "replica_id": "\(settings.replicaID)", "port": "\(settings.port)",
                "store": "\(settings.database.map { "\($0)" } ?? "in-memory")",
                "lease_ttl": "\(settings.leaseTTL)", "idle_timeout": "\(settings.idleTimeout.map { "\($0)" } ?? "off")",
                "retention": "\(settings.retention.map { "\($0)" } ?? "off")",
                "group_commit":
                    "\(settings.groupCommit.map { "max \($0.maxBatch), linger \($0.linger), writers \($0.writers)" } ?? "off")",
            ])
        // The one composition root: the database's services first (the pool closes last), then
        // the coordinator once the schema is migrated, then HTTP (stopped first on shutdown).
        // One clock for every part of this replica.
        let clock = ReplicaClock.system
        let database = settings.database.map {
            Database(
                url: $0, applicationName: "leasehold \(settings.replicaID)", sessionTimeout: settings.leaseTTL,
                listenProbe: settings.leaseTTL / 3, groupCommit: settings.groupCommit, logger: logger, clock: clock)
        }
        // Crash containment, with a database (a single process has no next replica to protect):
        // the watcher first, before any socket exists for it to inherit; suspects' steps each in
        // a `leasehold step` process of their own.
        var watcher: CrashWatcher?
        var isolation: (any StepIsolation)?
        if let url = self.database.text, settings.database != nil {
            let crashWatcher = CrashWatcher(databaseURL: url, replicaID: settings.replicaID, logger: logger)
            try crashWatcher.start()
            watcher = crashWatcher
            // No backtrace from an isolated step: the replica where it first trapped printed one,
            // and symbolicating takes seconds the quarantine would wait for.
            isolation = ChildProcessStepIsolation(
                arguments: ["step"], environment: ["LEASEHOLD_DATABASE_URL": url, "SWIFT_BACKTRACE": "enable=no"])
        }
        let migrated = OnceFlag()
        // The application's own pools (an external system's) close after the coordinator, like
        // the cluster's: they are services started before it.
        let resources = ApplicationResources(
            databaseURL: self.database.text, environment: ProcessInfo.processInfo.environment, logger: logger)
        let coordinator = Coordinator(
            store: database?.store ?? InMemoryStore(clock: clock),
            registry: try LeaseholdApplication.running.registry(resources),
            configuration: CoordinatorConfiguration(
                replicaID: ReplicaID(settings.replicaID), address: settings.advertise, leaseTTL: settings.leaseTTL,
                idleTimeout: settings.idleTimeout, selfFencing: !unsafeDisableSelfFencing,
                retention: settings.retention,
                stepIsolation: isolation),
            logger: logger, clock: clock)
        let api = LeaseholdAPI(
            coordinator: coordinator,
            configuration: ServerConfiguration(
                host: settings.host, port: settings.port, maxBodyBytes: settings.maxBody, apiKeys: settings.apiKeys,
                maxStreams: settings.maxStreams, streamStallTimeout: settings.streamStallTimeout,
                metricsText: { registry.emitToString() },
                migrated: { database == nil || migrated.isSet }))
        let startCoordinator = StartAfter(coordinator) {
            try await database?.migrate(within: .seconds(30), logger: logger)
            migrated.set()
        }
        do {
            // A service that ends with an error (the coordinator finding its replica id taken by a
            // newer process, a port already in use) shuts the group down gracefully, as SIGTERM
            // does, rather than cancelling it: cancelling the HTTP server while a connection it has
            // just accepted is still queued crashes in NIO ("Deinited NIOAsyncWriter without
            // calling finish()", swift-nio#2637; seen in the randomized fault run when a
            // superseded replica stopped under load).
            let services =
                (watcher.map { [$0] } ?? []) + (database?.services ?? []) + resources.services + [
                    startCoordinator, api.application(logger: logger),
                ]
            try await ServiceGroup(
                configuration: ServiceGroupConfiguration(
                    services: services.map {
                        .init(service: $0, failureTerminationBehavior: .gracefullyShutdownGroup)
                    },
                    gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
            ).run()
        } catch let error as DatabaseError {
            throw fail(error.message)
        }
    }
}

/// A service that runs `prepare` (migrations) before the wrapped service; when `prepare` throws,
/// the service group stops with that error.
struct StartAfter: Service {
    let service: any Service
    let prepare: @Sendable () async throws -> Void

    init(_ service: any Service, prepare: @escaping @Sendable () async throws -> Void) {
        self.service = service
        self.prepare = prepare
    }

    func run() async throws {
        try await prepare()
        try await service.run()
    }
}

/// Every serve setting, resolved from flag, environment or default (`Settings`) and checked.
struct ServeSettings {
    var host: String
    var port: Int
    var database: DatabaseURL?
    var replicaID: String
    var advertise: String
    var leaseTTL: Duration
    var idleTimeout: Duration?
    var apiKeys: [String]
    var maxBody: Int
    var maxStreams: Int
    var streamStallTimeout: Duration
    var retention: Duration?
    var groupCommit: GroupCommitSettings?

    init(_ serve: Serve, _ environment: Environment) throws {
        host = Settings.host.value(serve.host, environment)!
        let portText = Settings.port.value(serve.port, environment)!
        guard let port = Int(portText), (1...65535).contains(port) else {
            throw BadSetting(message: "--port: '\(portText)' is not a port number (1-65535)")
        }
        self.port = port
        database = try serve.database.url(required: false, environment)
        replicaID =
            Settings.replicaID.value(serve.replicaID, environment)
            ?? "\(ProcessInfo.processInfo.hostName)-\(ProcessInfo.processInfo.processIdentifier)"
        advertise = Settings.advertiseAddress.value(serve.advertiseAddress, environment) ?? "http://\(host):\(port)"
        leaseTTL = try parseDuration(Settings.leaseTTL.value(serve.leaseTTL, environment)!, flag: "--lease-ttl")
        // Under a second the margins do not hold: renewals every TTL/3, self-fencing 200 ms
        // before expiry, and a loaded machine's statement latency eat the whole lease.
        guard leaseTTL >= .seconds(1) else { throw BadSetting(message: "--lease-ttl: must be at least 1s") }
        let idleText = Settings.idleTimeout.value(serve.idleTimeout, environment)!
        idleTimeout = idleText.lowercased() == "off" ? nil : try parseDuration(idleText, flag: "--idle-timeout")
        var keys: [String] = []
        if let key = Settings.apiKey.value(serve.apiKey, environment) { keys.append(key) }
        if let file = Settings.apiKeyFile.value(serve.apiKeyFile, environment) {
            let text: String
            do {
                text = try String(contentsOfFile: file, encoding: .utf8)
            } catch {
                // A bad setting naming the file and why (missing, not readable, not UTF-8).
                throw BadSetting(message: "--api-key-file: cannot read '\(file)': \(error.localizedDescription)")
            }
            keys += text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
                .filter { !$0.isEmpty && !$0.hasPrefix("#") }
        }
        apiKeys = keys
        let bodyText = Settings.maxBody.value(serve.maxBody, environment)!
        guard let maxBody = Int(bodyText), maxBody >= 1024 else {
            throw BadSetting(message: "--max-body: '\(bodyText)' must be a byte count ≥ 1024")
        }
        self.maxBody = maxBody
        let streamsText = Settings.maxStreams.value(serve.maxStreams, environment)!
        guard let maxStreams = Int(streamsText), maxStreams >= 1 else {
            throw BadSetting(message: "--max-streams: '\(streamsText)' must be a positive integer")
        }
        self.maxStreams = maxStreams
        streamStallTimeout = try parseDuration(
            Settings.streamStallTimeout.value(serve.streamStallTimeout, environment)!, flag: "--stream-stall-timeout"
        )
        let retentionText = Settings.retention.value(serve.retention, environment)!
        retention = retentionText.lowercased() == "off" ? nil : try parseDuration(retentionText, flag: "--retention")
        // Shorter would let a finished run vanish before `POST /run` has read its result.
        if let retention, retention < .seconds(1) {
            throw BadSetting(message: "--retention: must be at least 1s, or off")
        }
        guard streamStallTimeout >= .milliseconds(100) else {
            throw BadSetting(message: "--stream-stall-timeout: must be at least 100ms")
        }
        groupCommit = try Self.groupCommit(serve, environment)
        // A write that has not returned within half a TTL counts as stuck (LeaseKeeper): a commit
        // that lingers must stay far from that, or waiting for company fences handlers.
        if let linger = groupCommit?.linger, linger > leaseTTL / 10 {
            throw BadSetting(message: "--batch-linger: must be at most a tenth of --lease-ttl (\(leaseTTL / 10))")
        }
    }

    private static func groupCommit(_ serve: Serve, _ environment: Environment) throws -> GroupCommitSettings? {
        let maxText = Settings.batchMax.value(serve.batchMax, environment)!
        if maxText.lowercased() == "off" { return nil }
        guard let maxBatch = Int(maxText), (1...10_000).contains(maxBatch) else {
            throw BadSetting(message: "--batch-max: '\(maxText)' must be 1-10000, or off")
        }
        let lingerText = Settings.batchLinger.value(serve.batchLinger, environment)!
        let linger =
            ["0", "0s", "0ms"].contains(lingerText.trimmingCharacters(in: .whitespaces))
            ? Duration.zero : try parseDuration(lingerText, flag: "--batch-linger")
        guard linger <= .seconds(1) else { throw BadSetting(message: "--batch-linger: must be at most 1s") }
        let writersText = Settings.batchWriters.value(serve.batchWriters, environment)!
        guard let writers = Int(writersText), (1...64).contains(writers) else {
            throw BadSetting(message: "--batch-writers: '\(writersText)' must be 1-64")
        }
        return GroupCommitSettings(maxBatch: maxBatch, linger: linger, writers: writers)
    }
}
