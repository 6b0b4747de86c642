import ArgumentParser
import Foundation
import LeaseholdEngine
import LeaseholdPostgres
import Logging

/// A flag value that may also come from an environment variable (the flag wins).
func setting(_ flag: String?, _ variable: String) -> String? {
    if let flag { return flag }
    if let value = ProcessInfo.processInfo.environment[variable], !value.isEmpty { return value }
    return nil
}

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
    @Option(
        name: .customLong("database-url"), help: "postgres://user:password@host:port/db (env LEASEHOLD_DATABASE_URL)")
    var databaseURL: String?

    /// The URL as given (flag or environment), for a child process of this replica.
    var text: String? { setting(databaseURL, "LEASEHOLD_DATABASE_URL") }

    func url(required: Bool) throws -> DatabaseURL? {
        guard let text = setting(databaseURL, "LEASEHOLD_DATABASE_URL") else {
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
    @Option(
        name: .customLong("log-level"), help: "trace|debug|info|notice|warning|error|critical (env LEASEHOLD_LOG_LEVEL)"
    )
    var level: String?

    @Option(name: .customLong("log-format"), help: "text|json (env LEASEHOLD_LOG_FORMAT)")
    var format: String?

    func bootstrap() throws -> Logger {
        let levelText = setting(level, "LEASEHOLD_LOG_LEVEL") ?? "info"
        guard let logLevel = Logger.Level(rawValue: levelText) else {
            throw BadSetting(message: "--log-level: '\(levelText)' is not a log level")
        }
        let formatText = setting(format, "LEASEHOLD_LOG_FORMAT") ?? "text"
        guard ["text", "json"].contains(formatText) else {
            throw BadSetting(message: "--log-format: '\(formatText)' must be text or json")
        }
        LoggingSystem.bootstrap { label in
            var handler: any LogHandler =
                formatText == "json" ? JSONLogHandler(label: label) : StreamLogHandler.standardError(label: label)
            handler.logLevel = logLevel
            return handler
        }
        var logger = Logger(label: "leasehold")
        logger.logLevel = logLevel
        return logger
    }
}
