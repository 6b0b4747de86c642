import ArgumentParser
import Foundation
import LeaseholdEngine
import LeaseholdPostgres
import Logging

/// One setting, declared once: its flag, its environment variable, its default and its help.
/// The flag wins over the variable, the variable over the default; an empty variable counts as
/// unset. The help reads "<summary> (env VARIABLE; default D)".
struct Setting: Sendable {
    /// The long flag without its dashes.
    let flag: String
    let variable: String
    let summary: String
    /// The value when neither flag nor variable is given (nil: unset, or computed by the caller).
    let defaultValue: String?
    /// The default as the help shows it (nil: none shown).
    let shownDefault: String?

    init(
        _ flag: String, _ variable: String, _ summary: String, default defaultValue: String? = nil,
        shown: String?? = .none
    ) {
        self.flag = flag
        self.variable = variable
        self.summary = summary
        self.defaultValue = defaultValue
        self.shownDefault = shown ?? defaultValue
    }

    var name: NameSpecification { .customLong(flag) }
    var help: ArgumentHelp {
        ArgumentHelp("\(summary) (env \(variable)\(shownDefault.map { "; default \($0)" } ?? ""))")
    }

    /// The value from the flag, else the environment, else the default.
    func value(_ flagValue: String?, _ environment: [String: String]) -> String? {
        if let flagValue { return flagValue }
        if let value = environment[variable], !value.isEmpty { return value }
        return defaultValue
    }
}

/// Every setting of the command line, in one place.
enum Settings {
    static let databaseURL = Setting(
        "database-url", "LEASEHOLD_DATABASE_URL", "postgres://user:password@host:port/db")
    static let logLevel = Setting(
        "log-level", "LEASEHOLD_LOG_LEVEL", "trace|debug|info|notice|warning|error|critical", default: "info",
        shown: .some(nil))
    static let logFormat = Setting(
        "log-format", "LEASEHOLD_LOG_FORMAT", "text|json", default: "text", shown: .some(nil))
    static let host = Setting("host", "LEASEHOLD_HOST", "Address to listen on", default: "127.0.0.1")
    static let port = Setting("port", "LEASEHOLD_PORT", "Port to listen on", default: "8080")
    static let replicaID = Setting(
        "replica-id", "LEASEHOLD_REPLICA_ID", "This replica's id", shown: "hostname-pid")
    static let advertiseAddress = Setting(
        "advertise-address", "LEASEHOLD_ADVERTISE_ADDRESS", "Address shown in the cluster view")
    static let leaseTTL = Setting("lease-ttl", "LEASEHOLD_LEASE_TTL", "Lease TTL, e.g. 5s", default: "5s")
    static let idleTimeout = Setting(
        "idle-timeout", "LEASEHOLD_IDLE_TIMEOUT", "Hibernate after this idle time; 'off' disables", default: "60s")
    static let apiKey = Setting("api-key", "LEASEHOLD_API_KEY", "Require 'Authorization: Bearer <key>'")
    static let apiKeyFile = Setting("api-key-file", "LEASEHOLD_API_KEY_FILE", "File with one API key per line")
    static let maxBody = Setting(
        "max-body", "LEASEHOLD_MAX_BODY", "Largest request body in bytes", default: "1048576")
    static let maxStreams = Setting(
        "max-streams", "LEASEHOLD_MAX_STREAMS", "Concurrent event streams per replica", default: "1000")
    static let streamStallTimeout = Setting(
        "stream-stall-timeout", "LEASEHOLD_STREAM_STALL_TIMEOUT",
        "End an event stream whose client has not taken a write for this long", default: "30s")
    static let retention = Setting(
        "retention", "LEASEHOLD_RETENTION", "Delete finished handlers this long after they finished; 'off' keeps them",
        default: "7d")
    static let batchMax = Setting(
        "batch-max", "LEASEHOLD_BATCH_MAX",
        "Most writes (creations, checkpoints) sharing one commit; 'off' commits each alone", default: "128")
    static let batchLinger = Setting(
        "batch-linger", "LEASEHOLD_BATCH_LINGER",
        "How long a commit waits for more writes; 0 flushes as soon as a writer is free", default: "0")
    static let batchWriters = Setting(
        "batch-writers", "LEASEHOLD_BATCH_WRITERS", "Group commits in flight at once", default: "2")
}

/// The environment settings are read from (a test passes its own).
typealias Environment = [String: String]

/// Stops start-up with a message naming the flag and exit code 2.
struct BadSetting: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

func fail(_ message: String) -> ExitCode {
    FileHandle.standardError.write(Data("leasehold: \(message)\n".utf8))
    return ExitCode(2)
}

/// Parses `250ms`, `5s`, `2m`, `1h`, `7d` (a bare number is seconds), at most `Bounds.longestDelay`
/// (ten years: longer is refused, where `Int64` milliseconds would trap on it).
func parseDuration(_ text: String, flag: String) throws -> Duration {
    let trimmed = text.trimmingCharacters(in: .whitespaces).lowercased()
    let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600), ("d", 86400)]
    func duration(_ seconds: Double) throws -> Duration {
        guard seconds <= Bounds.longestDelay else {
            throw BadSetting(message: "\(flag): '\(text)' is longer than ten years")
        }
        return .milliseconds(Int64((seconds * 1000).rounded()))
    }
    for (suffix, scale) in units where trimmed.hasSuffix(suffix) {
        let number = trimmed.dropLast(suffix.count)
        if let value = Double(number), value > 0, value.isFinite { return try duration(value * scale) }
        if suffix == "s", trimmed.hasSuffix("ms") { continue }
        throw BadSetting(message: "\(flag): '\(text)' is not a duration (use e.g. 250ms, 5s, 2m)")
    }
    if let value = Double(trimmed), value > 0, value.isFinite { return try duration(value) }
    throw BadSetting(message: "\(flag): '\(text)' is not a duration (use e.g. 250ms, 5s, 2m)")
}

/// The set-up of a one-shot command on the database (`migrate`, `status`, `release`,
/// `crash-watch`): logging bootstrapped, the URL required; a bad setting exits 2 naming it.
func databaseCommand(_ database: DatabaseOptions, _ logging: LogOptions) throws -> (Logger, DatabaseURL) {
    do {
        return (try logging.bootstrap(), try database.url(required: true)!)
    } catch let error as BadSetting {
        throw fail(error.message)
    }
}

struct DatabaseOptions: ParsableArguments {
    @Option(name: Settings.databaseURL.name, help: Settings.databaseURL.help)
    var databaseURL: String?

    /// The URL as given (flag or environment), for a child process of this replica.
    var text: String? { text(ProcessInfo.processInfo.environment) }

    func text(_ environment: Environment) -> String? { Settings.databaseURL.value(databaseURL, environment) }

    func url(required: Bool, _ environment: Environment = ProcessInfo.processInfo.environment) throws -> DatabaseURL? {
        guard let text = text(environment) else {
            if required { throw BadSetting(message: "--database-url (or LEASEHOLD_DATABASE_URL) is required") }
            return nil
        }
        do {
            return try DatabaseURL(text)
        } catch {
            throw BadSetting(message: "--database-url: \(error)")
        }
    }
}

struct LogOptions: ParsableArguments {
    @Option(name: Settings.logLevel.name, help: Settings.logLevel.help)
    var level: String?

    @Option(name: Settings.logFormat.name, help: Settings.logFormat.help)
    var format: String?

    /// The level and format, checked.
    func resolved(_ environment: Environment) throws -> (level: Logger.Level, json: Bool) {
        let levelText = Settings.logLevel.value(level, environment) ?? "info"
        guard let logLevel = Logger.Level(rawValue: levelText) else {
            throw BadSetting(message: "--log-level: '\(levelText)' is not a log level")
        }
        let formatText = Settings.logFormat.value(format, environment) ?? "text"
        guard ["text", "json"].contains(formatText) else {
            throw BadSetting(message: "--log-format: '\(formatText)' must be text or json")
        }
        return (logLevel, formatText == "json")
    }

    func bootstrap() throws -> Logger {
        let (logLevel, json) = try resolved(ProcessInfo.processInfo.environment)
        LoggingSystem.bootstrap { label in
            var handler: any LogHandler =
                json ? JSONLogHandler(label: label) : StreamLogHandler.standardError(label: label)
            handler.logLevel = logLevel
            return handler
        }
        var logger = Logger(label: "leasehold")
        logger.logLevel = logLevel
        return logger
    }
}
