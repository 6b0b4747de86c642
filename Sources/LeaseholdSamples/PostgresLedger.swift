import LeaseholdSamples
import Logging
import PostgresNIO

/// The `ledger` sample's external system in the cluster's database (migration 0007): one
/// statement raises the handler's fence row only if the posting's token is not lower, and writes
/// the posting only if it did.
public struct PostgresLedger: FencedLedger {
    let client: PostgresClient
    let logger: Logger

    /// The ledger in the database `client` connects to.
    public init(client: PostgresClient, logger: Logger) {
        self.client = client
        self.logger = logger
    }

    /// In an explicit transaction, like the store's writes: a posting counts once COMMIT answered.
    public func post(handler: String, posting: Int, amount: Int, token: Int64) async throws -> Bool {
        try await client.withConnection { connection in
            try await connection.checkedTransaction(logger: logger) { connection in
                try await post(handler: handler, posting: posting, amount: amount, token: token, on: connection)
            }
        }
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
