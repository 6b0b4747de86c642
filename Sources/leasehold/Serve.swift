import ArgumentParser
import CoreMetrics
import Foundation
import LeaseholdCoordinator
import LeaseholdEngine
import LeaseholdPostgres
import LeaseholdRuntime
import LeaseholdSamples
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

    @Option(help: "Address to listen on (env LEASEHOLD_HOST; default 127.0.0.1)") var host: String?
    @Option(help: "Port to listen on (env LEASEHOLD_PORT; default 8080)") var port: String?
    @OptionGroup var database: DatabaseOptions
    @Option(name: .customLong("replica-id"), help: "This replica's id (env LEASEHOLD_REPLICA_ID; default hostname-pid)")
    var replicaID: String?
    @Option(
        name: .customLong("advertise-address"),
        help: "Address shown in the cluster view (env LEASEHOLD_ADVERTISE_ADDRESS)")
    var advertiseAddress: String?
    @Option(name: .customLong("lease-ttl"), help: "Lease TTL, e.g. 5s (env LEASEHOLD_LEASE_TTL; default 5s)")
    var leaseTTL: String?
    @Option(
        name: .customLong("idle-timeout"),
        help: "Hibernate after this idle time; 'off' disables (env LEASEHOLD_IDLE_TIMEOUT; default 60s)")
    var idleTimeout: String?
    @Option(name: .customLong("api-key"), help: "Require 'Authorization: Bearer <key>' (env LEASEHOLD_API_KEY)")
    var apiKey: String?
    @Option(name: .customLong("api-key-file"), help: "File with one API key per line (env LEASEHOLD_API_KEY_FILE)")
    var apiKeyFile: String?
    @Option(
        name: .customLong("max-body"), help: "Largest request body in bytes (env LEASEHOLD_MAX_BODY; default 1048576)")
    var maxBody: String?
    @Option(
        name: .customLong("max-streams"),
        help: "Concurrent event streams per replica (env LEASEHOLD_MAX_STREAMS; default 1000)")
    var maxStreams: String?
    @Option(
        name: .customLong("stream-stall-timeout"),
        help:
            "End an event stream whose client has not taken a write for this long (env LEASEHOLD_STREAM_STALL_TIMEOUT; default 30s)"
    )
    var streamStallTimeout: String?
    @Option(
        name: .customLong("retention"),
        help:
            "Delete finished handlers this long after they finished; 'off' keeps them (env LEASEHOLD_RETENTION; default 7d)"
    )
    var retention: String?
    @Option(
        name: .customLong("batch-max"),
        help:
            "Most writes (creations, checkpoints) sharing one commit; 'off' commits each alone (env LEASEHOLD_BATCH_MAX; default 128)"
    )
    var batchMax: String?
    @Option(
        name: .customLong("batch-linger"),
        help:
            "How long a commit waits for more writes; 0 flushes as soon as a writer is free (env LEASEHOLD_BATCH_LINGER; default 0)"
    )
    var batchLinger: String?
    @Option(
        name: .customLong("batch-writers"),
        help: "Group commits in flight at once (env LEASEHOLD_BATCH_WRITERS; default 2)")
    var batchWriters: String?
    @OptionGroup var logging: LogOptions

    @Flag(
        name: .customLong("unsafe-disable-self-fencing"),
        help: ArgumentHelp("Never stop handlers on a lapsed renewal (fencing tests only)", visibility: .private))
    var unsafeDisableSelfFencing = false

    func run() async throws {
        let settings: Settings
        let logger: Logger
        do {
            logger = try logging.bootstrap()
            settings = try Settings(self)
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
        let database = settings.database.map {
            Database(
                url: $0, applicationName: "leasehold \(settings.replicaID)", sessionTimeout: settings.leaseTTL,
                listenProbe: settings.leaseTTL / 3, groupCommit: settings.groupCommit, logger: logger)
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
        let coordinator = Coordinator(
            store: database?.store ?? InMemoryStore(),
            registry: try workflows(ledger: database?.ledger(logger: logger) ?? InMemoryLedger()),
            configuration: CoordinatorConfiguration(
                replicaID: ReplicaID(settings.replicaID), address: settings.advertise, leaseTTL: settings.leaseTTL,
                idleTimeout: settings.idleTimeout, selfFencing: !unsafeDisableSelfFencing,
                retention: settings.retention,
                stepIsolation: isolation),
            logger: logger)
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
                (watcher.map { [$0] } ?? []) + (database?.services ?? []) + [
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

/// A flag set once, read from any thread.
final class OnceFlag: Sendable {
    private let value = Mutex(false)
    func set() { value.withLock { $0 = true } }
    var isSet: Bool { value.withLock { $0 } }
}

/// Every serve setting, resolved from flag or environment and checked.
struct Settings {
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

    init(_ serve: Serve) throws {
        host = setting(serve.host, "LEASEHOLD_HOST") ?? "127.0.0.1"
        let portText = setting(serve.port, "LEASEHOLD_PORT") ?? "8080"
        guard let port = Int(portText), (1...65535).contains(port) else {
            throw BadSetting(message: "--port: '\(portText)' is not a port number (1-65535)")
        }
        self.port = port
        database = try serve.database.url(required: false)
        replicaID =
            setting(serve.replicaID, "LEASEHOLD_REPLICA_ID")
            ?? "\(ProcessInfo.processInfo.hostName)-\(ProcessInfo.processInfo.processIdentifier)"
        advertise = setting(serve.advertiseAddress, "LEASEHOLD_ADVERTISE_ADDRESS") ?? "http://\(host):\(port)"
        leaseTTL = try parseDuration(setting(serve.leaseTTL, "LEASEHOLD_LEASE_TTL") ?? "5s", flag: "--lease-ttl")
        // Under a second the margins do not hold: renewals every TTL/3, self-fencing 200 ms
        // before expiry, and a loaded machine's statement latency eat the whole lease.
        guard leaseTTL >= .seconds(1) else { throw BadSetting(message: "--lease-ttl: must be at least 1s") }
        let idleText = setting(serve.idleTimeout, "LEASEHOLD_IDLE_TIMEOUT") ?? "60s"
        idleTimeout = idleText.lowercased() == "off" ? nil : try parseDuration(idleText, flag: "--idle-timeout")
        var keys: [String] = []
        if let key = setting(serve.apiKey, "LEASEHOLD_API_KEY") { keys.append(key) }
        if let file = setting(serve.apiKeyFile, "LEASEHOLD_API_KEY_FILE") {
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
        let bodyText = setting(serve.maxBody, "LEASEHOLD_MAX_BODY") ?? "1048576"
        guard let maxBody = Int(bodyText), maxBody >= 1024 else {
            throw BadSetting(message: "--max-body: '\(bodyText)' must be a byte count ≥ 1024")
        }
        self.maxBody = maxBody
        let streamsText = setting(serve.maxStreams, "LEASEHOLD_MAX_STREAMS") ?? "1000"
        guard let maxStreams = Int(streamsText), maxStreams >= 1 else {
            throw BadSetting(message: "--max-streams: '\(streamsText)' must be a positive integer")
        }
        self.maxStreams = maxStreams
        streamStallTimeout = try parseDuration(
            setting(serve.streamStallTimeout, "LEASEHOLD_STREAM_STALL_TIMEOUT") ?? "30s", flag: "--stream-stall-timeout"
        )
        let retentionText = setting(serve.retention, "LEASEHOLD_RETENTION") ?? "7d"
        retention = retentionText.lowercased() == "off" ? nil : try parseDuration(retentionText, flag: "--retention")
        // Shorter would let a finished run vanish before `POST /run` has read its result.
        if let retention, retention < .seconds(1) {
            throw BadSetting(message: "--retention: must be at least 1s, or off")
        }
        guard streamStallTimeout >= .milliseconds(100) else {
            throw BadSetting(message: "--stream-stall-timeout: must be at least 100ms")
        }
        groupCommit = try Self.groupCommit(serve)
        // A write that has not returned within half a TTL counts as stuck (LeaseKeeper): a commit
        // that lingers must stay far from that, or waiting for company fences handlers.
        if let linger = groupCommit?.linger, linger > leaseTTL / 10 {
            throw BadSetting(message: "--batch-linger: must be at most a tenth of --lease-ttl (\(leaseTTL / 10))")
        }
    }

    private static func groupCommit(_ serve: Serve) throws -> GroupCommitSettings? {
        let maxText = setting(serve.batchMax, "LEASEHOLD_BATCH_MAX") ?? "128"
        if maxText.lowercased() == "off" { return nil }
        guard let maxBatch = Int(maxText), (1...10_000).contains(maxBatch) else {
            throw BadSetting(message: "--batch-max: '\(maxText)' must be 1-10000, or off")
        }
        let lingerText = setting(serve.batchLinger, "LEASEHOLD_BATCH_LINGER") ?? "0"
        let linger =
            ["0", "0s", "0ms"].contains(lingerText.trimmingCharacters(in: .whitespaces))
            ? Duration.zero : try parseDuration(lingerText, flag: "--batch-linger")
        guard linger <= .seconds(1) else { throw BadSetting(message: "--batch-linger: must be at most 1s") }
        let writersText = setting(serve.batchWriters, "LEASEHOLD_BATCH_WRITERS") ?? "2"
        guard let writers = Int(writersText), (1...64).contains(writers) else {
            throw BadSetting(message: "--batch-writers: '\(writersText)' must be 1-64")
        }
        return GroupCommitSettings(maxBatch: maxBatch, linger: linger, writers: writers)
    }
}
