import ArgumentParser
import Foundation
import LeaseholdEngine
import LeaseholdKit
import LeaseholdPostgres
import LeaseholdStore
import Logging
import PostgresNIO

@main
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "leasehold-bench",
        abstract: "Leasehold benchmarks that print figures (JSON lines). HTTP load is driven by bench/run.",
        subcommands: [StoreBench.self])
}

/// Lease claims through PostgresStore vs the same statement sent raw, and one renew of N leases.
struct StoreBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "store")

    @Option(name: .customLong("database-url")) var databaseURL: String
    @Option(help: "Handlers to claim per measurement") var handlers = 20_000
    @Option(help: "Claim batch size") var batch = 100
    @Option(help: "Concurrent claimers") var claimers = 4
    @Option(help: "Leases renewed by one heartbeat") var leases = 10_000
    @Option(help: "Repetitions (the best and median are reported)") var repeats = 3

    func run() async throws {
        var logger = Logger(label: "bench")
        logger.logLevel = .warning
        let url = try DatabaseURL(databaseURL)
        let client = PostgresClient(configuration: url.clientConfiguration(), backgroundLogger: logger)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await client.run() }
            defer { group.cancelAll() }
            try await Migrator().migrate(client, logger: logger)
            let store = PostgresStore(client: client, logger: logger)
            try await measure(store: store, client: client, logger: logger)
        }
    }

    func reset(_ client: PostgresClient, logger: Logger) async throws {
        try await client.query("DELETE FROM handlers", logger: logger)
        try await client.query(
            """
            INSERT INTO handlers (id, workflow_name, run_id, status)
            SELECT 'b' || g, 'counter', 'r', 'running' FROM generate_series(1, \(handlers)) AS g
            """, logger: logger)
        try await client.query("VACUUM ANALYZE handlers", logger: logger)
    }

    /// Claims every row with `claimers` concurrent loops; returns rows per second.
    func claimAll(_ claim: @escaping @Sendable (String) async throws -> Int) async throws -> Double {
        let started = ContinuousClock.now
        let total = try await withThrowingTaskGroup(of: Int.self) { group in
            for index in 0..<claimers {
                group.addTask {
                    var claimed = 0
                    while true {
                        let count = try await claim("bench-\(index)")
                        if count == 0 { return claimed }
                        claimed += count
                    }
                }
            }
            return try await group.reduce(0, +)
        }
        let elapsed = ContinuousClock.now - started
        precondition(total == handlers, "claimed \(total) of \(handlers)")
        return Double(total) / elapsed.seconds
    }

    func measure(store: PostgresStore, client: PostgresClient, logger: Logger) async throws {
        var throughStore: [Double] = []
        var raw: [Double] = []
        let batch = self.batch
        for index in 0..<claimers {  // a claimer's registration must be current
            try await store.register(ReplicaID("bench-\(index)"), address: "bench", ttl: .seconds(3600))
        }
        for _ in 0..<repeats {
            try await reset(client, logger: logger)
            throughStore.append(
                try await claimAll { replica in
                    try await store.claim(ReplicaID(replica), limit: batch, only: nil).count
                })
            try await reset(client, logger: logger)
            // The same statement, sent raw through the same pool, rows counted but not decoded.
            raw.append(
                try await claimAll { replica in
                    var count = 0
                    let query = store.claimStatement(replica: replica, limit: batch)
                    for try await _ in try await client.query(query, logger: logger) { count += 1 }
                    return count
                })
        }
        // One renew of `leases` leases held by one replica (anchored to its registration).
        try await client.query("DELETE FROM handlers", logger: logger)
        try await store.register("renewer", address: "bench", ttl: .seconds(3600))
        try await client.query(
            """
            INSERT INTO handlers (id, workflow_name, run_id, status, owner_replica, lease_expires_at)
            SELECT 'l' || g, 'counter', 'r', 'running', 'renewer', 'infinity'
            FROM generate_series(1, \(leases)) AS g
            """, logger: logger)
        try await client.query("VACUUM ANALYZE handlers", logger: logger)
        var renewals: [Double] = []
        for _ in 0..<max(5, repeats) {
            let started = ContinuousClock.now
            let held = try await store.heartbeat("renewer", address: "bench", ttl: .seconds(3600))
            let elapsed = ContinuousClock.now - started
            precondition(held.count == leases)
            renewals.append(elapsed.seconds * 1000)
        }
        func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
        let result: JSONValue = [
            "claims_per_s_store": .double(median(throughStore).rounded()),
            "claims_per_s_raw": .double(median(raw).rounded()),
            "claims_ratio": .double((median(throughStore) / median(raw) * 1000).rounded() / 1000),
            "claim_batch": .int(batch), "claimers": .int(claimers), "handlers": .int(handlers),
            "renew_ms_median": .double((median(renewals) * 100).rounded() / 100),
            "renew_ms_best": .double(((renewals.min() ?? 0) * 100).rounded() / 100),
            "leases_renewed": .int(leases),
        ]
        print(result.jsonString)
    }
}
