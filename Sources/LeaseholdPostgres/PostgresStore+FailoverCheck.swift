import Foundation
import LeaseholdEngine
import LeaseholdStore
import PostgresNIO

/// The store's half of the failover check (`LeaseKeeper+FailoverCheck.swift`): the read that tells
/// whether a database node still holds every position this replica was told of, and the move of
/// the token sequence past every token seen before registering anew.
extension PostgresStore {
    /// See `HandlerStore.failoverCheck(_:)`.
    public func failoverCheck(_ handlerIDs: [HandlerID]) async throws -> FailoverCheckAnswer {
        try await guarded(gated: false) { connection in
            let ids = handlerIDs.map(\.rawValue)
            do {
                return try await positions(ids, tombstones: true, on: connection)
            } catch let error as PSQLError where error.serverInfo?[.sqlState] == "42P01" {
                // undefined_table: a database from before migration 0013 (a restored backup, a
                // standby that had not received it) has no tombstones; the check is still made.
                logger.warning("the database has no purge tombstones (migration 0013), checking without them")
                return try await positions(ids, tombstones: false, on: connection)
            }
        }
    }

    private func positions(_ ids: [String], tombstones: Bool, on connection: PostgresConnection) async throws
        -> FailoverCheckAnswer
    {
        var answer = FailoverCheckAnswer(highestToken: FencingToken(0), handlers: [:])
        for try await (kind, id, token, lastSequence, system, timeline) in try await connection.checkedQuery(
            Statements.failoverCheck(ids: ids, tombstones: tombstones), logger: logger
        ).decode((String, String?, Int64, Int64?, String?, Int32?).self) {
            switch (kind, id, lastSequence) {
            case ("handler", let id?, let lastSequence?):
                answer.handlers[HandlerID(id)] = FailoverCheckAnswer.Position(
                    token: FencingToken(token), lastSequence: lastSequence)
            case ("purged", let id?, let lastSequence?):
                answer.purged[HandlerID(id)] = FailoverCheckAnswer.Position(
                    token: FencingToken(token), lastSequence: lastSequence)
            default:
                answer.highestToken = FencingToken(token)
                if let system, let timeline { answer.node = (system, Int(timeline)) }
            }
        }
        return answer
    }

    /// See `HandlerStore.advanceTokens(past:)`.
    public func advanceTokens(past token: FencingToken) async throws {
        try await guarded(gated: false) { connection in
            // A million tokens a statement (about a second); a regression loses seconds of them.
            for _ in 0..<100 {
                var missing: Int64 = 0
                for try await left in try await connection.checkedQuery(
                    Statements.advanceTokens(past: token.rawValue), logger: logger
                ).decode(Int64.self) {
                    missing = left
                }
                if missing == 0 { return }
            }
            throw StoreError.corrupt("the token sequence is more than 10^8 behind \(token)")
        }
    }
}

extension PostgresStore.Statements {
    /// One header row (no id) with the highest token handed out and the node that answered,
    /// then each asked-for handler with its token and last sequence. The sequence is read with
    /// `pg_sequence_last_value` (USAGE suffices; NULL before its first `nextval`).
    /// One row for the database (its token sequence and node), one per handler that exists, and
    /// one per handler purged within the tombstones' hour: the latest position it was deleted at.
    /// Without `tombstones`, for a database without migration 0013 (one restored from before it),
    /// they are read from an empty relation of the same shape, so that its check can still be made.
    static func failoverCheck(ids: [String], tombstones: Bool = true) -> PostgresQuery {
        let source =
            tombstones
            ? "purged_handlers"
            : "(SELECT NULL::text, 0::bigint, 0::bigint, now() WHERE false) AS none (handler_id, token, last_sequence, purged_at)"
        return """
            SELECT 'database', NULL::text, COALESCE(pg_sequence_last_value('leasehold_fencing_tokens'), 0),
                NULL::bigint, n.system_identifier, n.timeline
            FROM leasehold_database_node() n
            UNION ALL
            SELECT 'handler', id, fencing_token, last_sequence, NULL, NULL FROM handlers WHERE id = ANY(\(ids)::text[])
            UNION ALL
            (SELECT DISTINCT ON (handler_id) 'purged', handler_id, token, last_sequence, NULL, NULL
            FROM \(unescaped: source)
            WHERE handler_id = ANY(\(ids)::text[]) AND purged_at >= now() - interval '1 hour'
            ORDER BY handler_id, token DESC, last_sequence DESC)
            """
    }

    /// Moves the token sequence past `token` and past every token a handler row holds (rows
    /// copied from elsewhere), and only forward: draws tokens, at most `advanceBatch` per
    /// statement, and answers how many are still missing (0: done). Drawn, not
    /// `setval`: a reservation or claim drawing at the same moment could otherwise be overtaken by a
    /// `setval` computed from before it, and the sequence would move back below a token it handed
    /// out. Draws only move forward, whoever else draws meanwhile.
    static func advanceTokens(past token: Int64) -> PostgresQuery {
        """
        WITH goal AS (
            SELECT GREATEST(\(token), (SELECT COALESCE(max(fencing_token), 0) FROM handlers))
                - (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END
                    FROM leasehold_fencing_tokens) AS missing),
        drawn AS (
            SELECT nextval('leasehold_fencing_tokens') FROM generate_series(1, LEAST(
                (SELECT missing FROM goal), \(advanceBatch))))
        SELECT GREATEST(0, (SELECT missing FROM goal) - (SELECT count(*) FROM drawn))
        """
    }

    static let advanceBatch: Int64 = 1_000_000
}
