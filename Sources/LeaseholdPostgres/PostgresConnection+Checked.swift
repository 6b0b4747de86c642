import Logging
import PostgresNIO

/// Queries that fail, rather than wait forever, on a connection the server has closed.
///
/// postgres-nio 1.33 loses a query sent on a connection that is already closed: the call never
/// returns (checked: a leased connection whose backend was terminated, then `SELECT 1`). A pooled
/// connection can close while the store holds it — between the statements of a transaction, or
/// just as the pool hands it out — when the server restarts or a session is terminated. Every
/// store statement therefore checks the connection first. What is left is the moment between the
/// server's close and the client noticing it; `RequestWatchdog` ends such a request by closing its
/// connection once its statement has waited past the time limit.
extension PostgresConnection {
    package struct Closed: Error, CustomStringConvertible {
        package var description: String { "connection closed" }
    }

    @discardableResult
    package func checkedQuery(_ query: PostgresQuery, logger: Logger) async throws -> PostgresRowSequence {
        try InFlightRequest.current?.begin()
        guard !isClosed else { throw Closed() }
        return try await self.query(query, logger: logger)
    }

    package func checkedExecute<Statement: PostgresPreparedStatement, Row>(_ statement: Statement, logger: Logger)
        async throws -> AsyncThrowingMapSequence<PostgresRowSequence, Row> where Row == Statement.Row
    {
        try InFlightRequest.current?.begin()
        guard !isClosed else { throw Closed() }
        return try await execute(statement, logger: logger)
    }

    /// `BEGIN`, `body`, `COMMIT` (or `ROLLBACK` when `body` throws), each statement checked.
    /// - Throws: `body`'s error, or the error of `BEGIN` or `COMMIT`.
    package func checkedTransaction<T: Sendable>(logger: Logger, _ body: (PostgresConnection) async throws -> T)
        async throws -> T
    {
        try await checkedQuery("BEGIN", logger: logger)
        let value: T
        do {
            value = try await body(self)
        } catch {
            do {
                try await checkedQuery("ROLLBACK", logger: logger)
            } catch {
                // Never return a connection to the pool inside a failed transaction; a close that
                // fails has nothing left to undo (the caller gets the first error).
                try? await close()
            }
            throw error
        }
        try await checkedQuery("COMMIT", logger: logger)
        return value
    }
}
