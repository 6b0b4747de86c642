import LeaseholdKit
import LeaseholdPostgres
import Logging
import PostgresNIO

/// The `ledger` sample's external system in a PostgreSQL database: one statement raises the
/// handler's fence row only if the posting's token is not lower, and writes the posting only if
/// it did.
///
/// The sample owns its tables: it creates them (`IF NOT EXISTS`) before its first posting, as an
/// application's code would. (Migration 0007 of the store created them once; migrations are
/// append-only, so a database migrated before has them already, which `IF NOT EXISTS` accepts.)
public final class PostgresLedger: FencedLedger {
    let client: PostgresClient
    let logger: Logger
    private let tablesReady = OnceFlag()

    /// The ledger in the database `client` connects to.
    public init(client: PostgresClient, logger: Logger) {
        self.client = client
        self.logger = logger
    }

    /// In an explicit transaction, like the store's writes: a posting counts once COMMIT answered.
    public func post(handler: String, posting: Int, amount: Int, token: Int64) async throws -> Bool {
        try await client.withConnection { connection in
            try await createTables(on: connection)
            return try await connection.checkedTransaction(logger: logger) { connection in
                try await post(handler: handler, posting: posting, amount: amount, token: token, on: connection)
            }
        }
    }

    /// The tables, once per process (concurrent first postings may both run it: `IF NOT EXISTS`).
    private func createTables(on connection: PostgresConnection) async throws {
        guard !tablesReady.isSet else { return }
        for statement in [
            "CREATE TABLE IF NOT EXISTS sample_ledger_fence (handler_id text PRIMARY KEY, token bigint NOT NULL)",
            """
            CREATE TABLE IF NOT EXISTS sample_ledger (
                handler_id text NOT NULL, posting integer NOT NULL, amount bigint NOT NULL, token bigint NOT NULL,
                posted_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (handler_id, posting))
            """,
        ] {
            do {
                try await connection.checkedQuery(PostgresQuery(unsafeSQL: statement), logger: logger)
            } catch let error as PSQLError where error.serverInfo?[.sqlState] == "23505" {
                // Two first postings racing on the catalog: the other one created it.
            }
        }
        tablesReady.set()
    }

    private func post(handler: String, posting: Int, amount: Int, token: Int64, on connection: PostgresConnection)
        async throws -> Bool
    {
        let rows = try await connection.checkedQuery(
            """
            WITH fence AS (
                INSERT INTO sample_ledger_fence (handler_id, token) VALUES (\(handler), \(token))
                ON CONFLICT (handler_id) DO UPDATE SET token = EXCLUDED.token
                WHERE sample_ledger_fence.token <= EXCLUDED.token
                RETURNING handler_id)
            INSERT INTO sample_ledger (handler_id, posting, amount, token)
            SELECT handler_id, \(posting), \(Int64(amount)), \(token) FROM fence
            ON CONFLICT (handler_id, posting) DO UPDATE SET amount = EXCLUDED.amount, token = EXCLUDED.token,
                posted_at = now()
            RETURNING 1
            """, logger: logger)
        var posted = false
        for try await _ in rows { posted = true }
        return posted
    }
}
