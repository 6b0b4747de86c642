import ArgumentParser
import Foundation
import LeaseholdEngine
import LeaseholdKit
import LeaseholdPostgres
import LeaseholdRuntime
import LeaseholdStore
import Logging
import ServiceLifecycle
import Synchronization

// Crash containment (docs/design.md, "A step that ends its process"): the commands a replica
// starts as child processes — its crash watcher and its isolated steps — and the operator's
// release of a quarantined handler.

/// `leasehold step`: runs one step run read from standard input (`IsolatedStep`) and writes its
/// `IsolatedStep.Answer` to standard output. A replica starts it for each step of a suspect
/// handler; a trap here ends only this process.
struct IsolatedStepCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "step", abstract: "Run one step of a suspect handler (started by a replica).",
        shouldDisplay: false)

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var logging: LogOptions

    func run() async throws {
        let logger: Logger
        let url: DatabaseURL?
        do {
            logger = try logging.bootstrap()
            url = try database.url(required: false)
        } catch let error as BadSetting {
            throw fail(error.message)
        }
        // Dies with the replica that started it: a step of a replica that is gone must not go on.
        let parent =
            ProcessInfo.processInfo.environment[ChildProcessStepIsolation.parentVariable]
            .flatMap { Int32($0) } ?? getppid()
        guard CrashReport.dieWithParent(parent) else { throw ExitCode(1) }  // the replica was already gone
        // The answer goes out on a descriptor of its own (closed on exec: a process the step
        // starts must not hold it open); what the step prints goes to stderr.
        let answerDescriptor = fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 3)
        dup2(STDERR_FILENO, STDOUT_FILENO)
        let step = try JSONDecoder().decode(IsolatedStep.self, from: FileHandle.standardInput.readDataToEndOfFile())
        let answer: IsolatedStep.Answer
        // The application's pools connect on their first statement only: a step that posts
        // nothing costs no session.
        let resources = ApplicationResources(
            databaseURL: url == nil ? nil : database.text, environment: ProcessInfo.processInfo.environment,
            logger: logger)
        let registry = try LeaseholdApplication.running.registry(resources)
        answer = try await resources.withPoolsRunning { await step.perform(in: registry) }
        FileHandle(fileDescriptor: answerDescriptor, closeOnDealloc: true).write(try JSONEncoder().encode(answer))
    }
}

/// `leasehold crash-watch`: the crash watcher of one replica, its child. Reads its standard input
/// (the pipe `CrashReport` writes to from the replica's signal handler) until the replica is gone;
/// when a crash report came first, records each handler it names as a suspect
/// (`HandlerStore.recordCrash`) before the dead replica's leases lapse. Exits either way.
struct CrashWatch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "crash-watch", abstract: "Watch a replica for a crash (started by the replica).",
        shouldDisplay: false)

    @OptionGroup var database: DatabaseOptions
    @Option(name: .customLong("replica-id"), help: "The replica watched") var replicaID: String
    @OptionGroup var logging: LogOptions

    func run() async throws {
        let (logger, url) = try databaseCommand(database, logging)
        // Blocks until the replica's end closes the pipe: this process does nothing else.
        let text = String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
        guard let report = CrashReport.Report(parsing: text) else { return }  // it ended otherwise
        logger.critical(
            "replica died of a fault; the handlers in a step there become suspects",
            metadata: [
                "replica_id": "\(replicaID)", "signal": "\(report.signal)",
                "handlers_in_a_step": "\(report.all ? "all" : report.handlerIDs.joined(separator: ","))",
            ])
        // Tries for up to 10 s, as long as the dying replica waits for the answer below (where it
        // is a container's PID 1 its end ends this process too): the database may be failing over.
        let clock = ReplicaClock.system
        let deadline = clock.now + .seconds(10)
        var backoff = Backoff(.waitedOn)
        // The answer (or this process's end) lets the dying replica go on to its end.
        defer { FileHandle.standardOutput.write(Data("recorded\n".utf8)) }
        while true {
            do {
                let marked = try await withDatabase(url, logger: logger, limit: .seconds(5)) { database in
                    try await database.store.recordCrash(
                        of: ReplicaID(replicaID), handlers: report.handlerIDs.map { HandlerID($0) }, all: report.all,
                        signal: report.signal)
                }
                logger.error(
                    "suspects recorded", metadata: ["replica_id": "\(replicaID)", "handlers": "\(marked.count)"])
                return
            } catch {
                guard clock.now < deadline else {
                    logger.critical("the crash could not be recorded", metadata: ["error": "\(error)"])
                    throw ExitCode(1)
                }
                try await clock.sleep(for: backoff.next())
            }
        }
    }
}

/// `leasehold release ID`: releases a quarantined handler (as `POST /handlers/{id}/release`).
struct Release: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Release a quarantined handler: it runs again, its steps isolated, where it stopped.")

    @Argument(help: "The handler id") var handlerID: String
    @OptionGroup var database: DatabaseOptions
    @OptionGroup var logging: LogOptions

    func run() async throws {
        let (logger, url) = try databaseCommand(database, logging)
        let id = HandlerID(handlerID)
        let released = try await withDatabase(url, logger: logger) { database in
            try await database.store.releaseQuarantine(id)
        }
        guard released else { throw fail("handler '\(handlerID)' is not quarantined (or does not exist)") }
        print("released \(handlerID)")
    }
}

/// Keeps a crash watcher (`leasehold crash-watch`) running beside this replica: started before
/// anything else (so that it inherits no socket), its pipe installed as the crash report's,
/// started again should it die. On shutdown it is left alone: it exits when this process does.
final class CrashWatcher: Service, Sendable {
    let environment: [String: String]
    let arguments: [String]
    let logger: Logger
    private let clock = ReplicaClock.system
    /// The current watcher and its pipes (the report, and its answer that the report is
    /// recorded), whose ends here must stay open for the life of this process (a `Pipe` closes
    /// its descriptors when it goes).
    private let current = Mutex<(process: Process, report: Pipe, answer: Pipe)?>(nil)

    init(databaseURL: String, replicaID: String, logger: Logger) {
        self.environment = ProcessInfo.processInfo.environment.merging(
            ["LEASEHOLD_DATABASE_URL": databaseURL]) { $1 }
        self.arguments = ["crash-watch", "--replica-id", replicaID]
        self.logger = logger
    }

    /// Starts a watcher and reports crashes to it from now on.
    func start() throws {
        let process = Process()
        process.executableURL = ChildProcessStepIsolation.ownExecutable
        process.arguments = arguments
        process.environment = environment
        let report = Pipe()
        let answer = Pipe()
        process.standardInput = report
        process.standardOutput = answer
        try process.run()
        let descriptor = report.fileHandleForWriting.fileDescriptor
        let acknowledgement = answer.fileHandleForReading.fileDescriptor
        // Only this process may hold these ends: a child holding the report's would keep the
        // watcher waiting past this process's end.
        _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC)
        _ = fcntl(acknowledgement, F_SETFD, FD_CLOEXEC)
        try CrashReport.install(reportingTo: descriptor, acknowledgedBy: acknowledgement)
        // (The previous watcher's pipes close now: it is gone.)
        current.withLock { $0 = (process, report, answer) }
    }

    /// Waits on the watcher; starts another when it ended (backing off while they keep ending),
    /// until shutdown. A watcher that cannot be started is logged and tried again: the replica
    /// runs on without containment meanwhile rather than stop.
    func run() async throws {
        var backoff = Backoff(.background)
        while true {
            let startedAt = clock.now
            let ended = AsyncStream<Int32> { continuation in
                current.withLock { current in
                    guard let process = current?.process else { return continuation.finish() }
                    process.terminationHandler = { process in
                        continuation.yield(process.terminationStatus)
                        continuation.finish()
                    }
                    if !process.isRunning { continuation.finish() }
                }
            }
            let status = await cancelWhenGracefulShutdown { () async -> Int32? in
                var status: Int32?
                for await ended in ended { status = ended }
                return status
            }
            if Task.isCancelled || Task.isShuttingDownGracefully { return }
            if clock.now - startedAt > .seconds(60) { backoff.reset() }
            logger.error(
                "crash watcher exited; starting another",
                metadata: ["status": "\(status.map(String.init) ?? "?")"])
            while !Task.isShuttingDownGracefully {
                try await clock.sleep(for: backoff.next())
                do {
                    try start()
                    break
                } catch {
                    logger.error("crash watcher could not be started", metadata: ["error": "\(error)"])
                }
            }
        }
    }
}
