import Foundation
import LeaseholdCoordinator
import LeaseholdEngine
import LeaseholdPostgres
import LeaseholdSamples
import LeaseholdStore
import LeaseholdTestSupport
import Logging
import PostgresNIO
import Testing

/// Upgrades, at the database: the rows a version wrote (a handler hibernated while it waits, with
/// its log, its lease history, and an answer in its inbox that no replica applied yet) load into
/// that version's schema, every later migration applies over them, and a replica of this version
/// reloads the handler and completes it. `Fixtures/<version>/rows.json` holds them as that
/// version wrote them; a new version adds its own (`LEASEHOLD_WRITE_FIXTURES=<dir>`) and never
/// edits an old one.
@Suite(
    "Stored rows of earlier versions", .enabled(if: TestDatabase.isConfigured, "needs the test Postgres"),
    .timeLimit(.minutes(2)))
struct StoredRowsUpgradeTests {
    /// Each table and the order its rows are written back in (the log's contiguity trigger wants
    /// sequences in order).
    static let tables = [
        ("handlers", "id"), ("event_log", "handler_id, sequence"), ("inbox", "seq"), ("lease_history", "seq"),
    ]
    static let id = HandlerID("upgrade-approval")

    static var fixtureVersions: [URL] {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")
        return ((try? FileManager.default.contentsOfDirectory(at: root, includingPropertiesForKeys: nil)) ?? [])
            .filter { FileManager.default.fileExists(atPath: $0.appendingPathComponent("rows.json").path) }
            .sorted { $0.path < $1.path }
    }

    static func text(_ client: PostgresClient, _ sql: String) async throws -> String {
        var answer = ""
        for try await value in try await client.query(PostgresQuery(unsafeSQL: sql), logger: Harness.logger)
            .decode(String.self)
        {
            answer = value
        }
        return answer
    }

    /// Writes this version's rows (only with `LEASEHOLD_WRITE_FIXTURES`).
    @Test func thisVersionsRowsCanBeWritten() async throws {
        guard let directory = ProcessInfo.processInfo.environment["LEASEHOLD_WRITE_FIXTURES"] else { return }
        try await TestDatabase.withStore { postgres, _ in
            try await Harness.withCoordinators([postgres], idle: .milliseconds(100)) { coordinators in
                _ = try await coordinators[0].start(
                    workflow: "approval", startEvent: ["request": "upgrade"], handlerID: Self.id.rawValue)
                let hibernated = try await eventually(timeout: .seconds(20)) {
                    try await postgres.handler(Self.id)?.hibernated == true
                }
                try #require(hibernated)
            }
            // No replica runs now: the answer waits in the inbox, as across an upgrade.
            _ = try await postgres.appendInbox(
                Self.id,
                InboxEvent(id: "answer", event: AnyEvent(type: "HumanResponseEvent", value: ["response": "yes"])),
                accepting: nil, from: nil, claim: false)
            var rows: [String: String] = [:]
            for (table, order) in Self.tables {
                rows[table] = try await Self.text(
                    postgres.client, "SELECT COALESCE(json_agg(t ORDER BY \(order)), '[]')::text FROM \(table) t")
            }
            let schema = try await Self.text(postgres.client, "SELECT max(version)::text FROM schema_migrations")
            let sequence = try await Self.text(postgres.client, "SELECT last_value::text FROM leasehold_fencing_tokens")
            let fixture: [String: Any] = [
                "schema": Int(schema) ?? 0, "sequence": Int(sequence) ?? 0,
                "tables": rows.mapValues { try! JSONSerialization.jsonObject(with: Data($0.utf8)) },
            ]
            let url = URL(fileURLWithPath: directory)
            try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
            try JSONSerialization.data(withJSONObject: fixture, options: [.prettyPrinted, .sortedKeys])
                .write(to: url.appendingPathComponent("rows.json"))
        }
    }

    @Test func everyEarlierVersionsRowsUpgradeAndResume() async throws {
        let versions = Self.fixtureVersions
        #expect(!versions.isEmpty, "no fixtures found")
        for version in versions {
            let data = try Data(contentsOf: version.appendingPathComponent("rows.json"))
            let fixture = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
            let schema = try #require(fixture["schema"] as? Int)
            let sequence = try #require(fixture["sequence"] as? Int)
            let tables: [String: String] = try #require(fixture["tables"] as? [String: Any]).mapValues {
                String(decoding: try JSONSerialization.data(withJSONObject: $0), as: UTF8.self)
            }
            try await TestDatabase.withEmptyDatabase { url in
                try await TestDatabase.withClient(url) { client in
                    // That version's schema, its rows, then every later migration over them.
                    let older = try Migrator.bundled().filter { $0.version <= schema }
                    try await Migrator(migrations: older).migrate(client, logger: Harness.logger)
                    for (table, _) in Self.tables {
                        let json = tables[table] ?? "[]"
                        _ = try await client.query(
                            """
                            INSERT INTO \(unescaped: table)
                            SELECT * FROM json_populate_recordset(NULL::\(unescaped: table), \(json)::json)
                            """,
                            logger: Harness.logger)
                    }
                    // The sequences as that version left them.
                    _ = try await client.query(
                        "SELECT setval('leasehold_fencing_tokens', \(Int64(sequence)))", logger: Harness.logger)
                    for table in ["inbox", "lease_history"] {
                        _ = try await client.query(
                            """
                            SELECT setval(pg_get_serial_sequence(\(table), 'seq'), max(seq)) FROM \(unescaped: table)
                            HAVING count(*) > 0
                            """,
                            logger: Harness.logger)
                    }
                    try await Migrator().migrate(client, logger: Harness.logger)
                }
                try await TestDatabase.withClient(url) { client in
                    let store = PostgresStore(client: client, logger: Harness.logger, groupCommit: .standard)
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        group.addTask { try await store.run() }
                        defer { group.cancelAll() }
                        try await Harness.withCoordinators([store], idle: nil) { coordinators in
                            // The claim sweep finds a hibernated handler with an inbox event.
                            let done = try await coordinators[0].awaitCompletion(Self.id)
                            #expect(done.status == .completed, "\(version.lastPathComponent): \(done)")
                            #expect(done.result?.value["result"]?["response"] == "yes")
                            let log = try await store.events(Self.id, after: -1, limit: 100)
                            #expect(log.map(\.sequence) == Array(0..<Int64(log.count)))
                        }
                    }
                }
            }
        }
    }
}
