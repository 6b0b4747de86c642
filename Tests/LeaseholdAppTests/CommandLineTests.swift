import ArgumentParser
import Foundation
import LeaseholdEngine
import LeaseholdKit
import LeaseholdPostgres
import LeaseholdSamples
import Testing

@testable import LeaseholdApp

/// The command line every application gets: the same flags, variables and defaults as the
/// `leasehold` executable had before it became an application (the golden files were taken from
/// that executable's `serve --help` and are compared byte for byte).
@Suite("Command line")
struct CommandLineTests {
    static let samples = LeaseholdApplication(name: "leasehold") { _ in try Samples.all() }

    func golden(_ name: String) throws -> String {
        let url = try #require(Bundle.module.url(forResource: "Golden/\(name)", withExtension: nil))
        return try String(contentsOf: url, encoding: .utf8)
    }

    @Test func serveHelpIsUnchanged() throws {
        let help = LeaseholdApplication.$current.withValue(Self.samples) {
            RootCommand.helpMessage(for: Serve.self, columns: 80)
        }
        #expect(help + "\n" == (try golden("serve-help.txt")))
    }

    /// Each row: arguments and environment in, every resolved setting out (or the message that
    /// stops start-up).
    static let rows: [(arguments: [String], environment: [String: String])] = [
        ([], [:]),
        (["--host", "0.0.0.0", "--port", "9000"], [:]),
        ([], ["LEASEHOLD_HOST": "10.0.0.1", "LEASEHOLD_PORT": "8081"]),
        (["--port", "9001"], ["LEASEHOLD_PORT": "8081"]),
        ([], ["LEASEHOLD_PORT": ""]),
        (["--lease-ttl", "2s", "--idle-timeout", "off", "--retention", "off"], [:]),
        ([], ["LEASEHOLD_LEASE_TTL": "500ms"]),
        ([], ["LEASEHOLD_LEASE_TTL": "1500ms", "LEASEHOLD_IDLE_TIMEOUT": "2m", "LEASEHOLD_RETENTION": "1h"]),
        (["--database-url", "postgres://u:p@db:5433/x"], [:]),
        ([], ["LEASEHOLD_DATABASE_URL": "postgres://u@h/d?sslmode=require"]),
        (["--database-url", "mysql://x"], [:]),
        (["--replica-id", "r1", "--advertise-address", "http://r1:8080"], [:]),
        ([], ["LEASEHOLD_REPLICA_ID": "r2"]),
        (["--api-key", "k1"], [:]),
        (["--api-key-file", "/nonexistent/keys"], [:]),
        (["--max-body", "1023"], [:]),
        (["--max-body", "2048", "--max-streams", "5", "--stream-stall-timeout", "250ms"], [:]),
        (["--max-streams", "0"], [:]),
        (["--stream-stall-timeout", "50ms"], [:]),
        (["--batch-max", "off"], [:]),
        (["--batch-max", "64", "--batch-linger", "5ms", "--batch-writers", "4"], [:]),
        ([], ["LEASEHOLD_BATCH_LINGER": "1s"]),
        (["--batch-writers", "65"], [:]),
        (["--retention", "500ms"], [:]),
        (["--idle-timeout", "forever"], [:]),
        (["--lease-ttl", "100000d"], [:]),
        ([], ["LEASEHOLD_LOG_LEVEL": "verbose"]),
        (["--log-format", "json", "--log-level", "debug"], [:]),
    ]

    static func resolve(_ arguments: [String], _ environment: [String: String]) -> String {
        do {
            let serve = try Serve.parse(arguments)
            let settings = try ServeSettings(serve, environment)
            let log = try serve.logging.resolved(environment)
            let replica =
                settings.replicaID.hasPrefix(ProcessInfo.processInfo.hostName + "-")
                ? "hostname-pid" : settings.replicaID
            return [
                "host=\(settings.host)", "port=\(settings.port)",
                "database=\(settings.database.map { "\($0)" } ?? "none")", "replica=\(replica)",
                "advertise=\(settings.advertise)", "ttl=\(settings.leaseTTL)",
                "idle=\(settings.idleTimeout.map { "\($0)" } ?? "off")", "keys=\(settings.apiKeys.count)",
                "body=\(settings.maxBody)", "streams=\(settings.maxStreams)", "stall=\(settings.streamStallTimeout)",
                "retention=\(settings.retention.map { "\($0)" } ?? "off")",
                "batch=\(settings.groupCommit.map { "\($0.maxBatch)/\($0.linger)/\($0.writers)" } ?? "off")",
                "log=\(log.level)/\(log.json ? "json" : "text")",
            ].joined(separator: " ")
        } catch let error as BadSetting {
            return "error: \(error.message)"
        } catch {
            return "error: \(error)"
        }
    }

    @Test func resolvedSettingsAreUnchanged() throws {
        let lines = Self.rows.map { row in
            "\(row.arguments.joined(separator: " ")) | \(row.environment.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")) -> \(Self.resolve(row.arguments, row.environment))"
        }
        let text = lines.joined(separator: "\n") + "\n"
        if let path = ProcessInfo.processInfo.environment["LEASEHOLD_WRITE_GOLDEN"] {
            try text.write(toFile: path, atomically: true, encoding: .utf8)
        }
        #expect(text == (try golden("serve-settings.txt")))
    }

    /// The duration vectors Python's `leasehold_kit.durations` is checked against too: one
    /// parser's behaviour, mirrored (tests-python/test_durations.py).
    @Test func durationsReadAsTheVectorsSay() throws {
        struct Vectors: Decodable { var vectors: [[DurationVector]] }
        enum DurationVector: Decodable {
            case text(String)
            case milliseconds(Int64?)
            init(from decoder: any Decoder) throws {
                let value = try decoder.singleValueContainer()
                if let text = try? value.decode(String.self) {
                    self = .text(text)
                } else {
                    self = .milliseconds(value.decodeNil() ? nil : try value.decode(Int64.self))
                }
            }
        }
        let vectors = try JSONDecoder().decode(Vectors.self, from: Data(try golden("durations.json").utf8)).vectors
        #expect(vectors.count >= 20)
        for vector in vectors {
            guard case .text(let text) = vector[0], case .milliseconds(let expected) = vector[1] else {
                Issue.record("malformed vector \(vector)")
                continue
            }
            let parsed = try? parseDuration(text, flag: "--x")
            let milliseconds = parsed.map(\.wholeMilliseconds)
            #expect(milliseconds == expected, "'\(text)'")
        }
    }

    @Test func anApplicationNamesItsOwnCommand() async throws {
        let application = LeaseholdApplication(name: "document-review", abstract: "Reviews documents.") { _ in
            [try Samples.echo()]
        }
        let help = LeaseholdApplication.$current.withValue(application) { RootCommand.helpMessage(columns: 80) }
        #expect(help.contains("USAGE: document-review <subcommand>"))
        #expect(help.contains("Reviews documents."))
        let runHelp = LeaseholdApplication.$current.withValue(application) {
            RootCommand.helpMessage(for: Run.self, columns: 80)
        }
        #expect(runHelp.contains("Workflow name (echo)"))
    }

    @Test func aBadSettingExitsTwoNamingTheFlag() async throws {
        let status = await Self.samples.run(arguments: ["serve", "--port", "0"])
        #expect(status == 2)
    }
}
