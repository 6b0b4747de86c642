import Logging
import NIOCore
import PostgresNIO
import Synchronization

/// Queries that fail, rather than wait forever, on a connection the server has closed.
///
/// postgres-nio 1.33 loses a query written to a channel whose handlers are already gone: it
/// writes the query with no promise for the write, so the channel's "closed" error is dropped
/// and the call never returns, whatever cancellation (checked: a leased connection whose backend
/// was terminated, then `SELECT 1`). A pooled connection can close while the store holds it —
/// between the statements of a transaction, or just as the pool hands it out — when the server
/// restarts or a session is terminated, as every failover does.
///
/// So every statement checks the connection and writes its query in one turn of the
/// connection's event loop (`onEventLoop`): a channel still open then still has its handler,
/// whose state machine fails a query on a closing connection. Checked from another thread, the
/// close could land between the check and the write (found: a full test run beside a CPU hog
/// stalled in about one run of three, a read after a simulated failover waiting forever with no
/// session open). What is left is a server that never answers an open connection;
/// `RequestWatchdog` ends such a request by closing its connection.
extension PostgresConnection {
    package struct Closed: Error, CustomStringConvertible {
        package var description: String { "connection closed" }
    }

    @discardableResult
    package func checkedQuery(_ query: PostgresQuery, logger: Logger) async throws -> PostgresRowSequence {
        try InFlightRequest.current?.begin()
        return try await onEventLoop {
            try checkOpen()
            return try await self.query(query, logger: logger)
        }
    }

    package func checkedExecute<Statement: PostgresPreparedStatement, Row>(_ statement: Statement, logger: Logger)
        async throws -> AsyncThrowingMapSequence<PostgresRowSequence, Row> where Row == Statement.Row
    {
        try InFlightRequest.current?.begin()
        return try await onEventLoop {
            try checkOpen()
            return try await execute(statement, logger: logger)
        }
    }

    /// Runs `body` with this connection's event loop as its task executor: the nonisolated code
    /// of `body` (and of postgres-nio's query up to its first suspension, where it writes the
    /// query) runs on the loop's thread, between two of its events, so no close can come between
    /// the check and the write.
    private func onEventLoop<T>(_ body: () async throws -> T) async throws -> T {
        try await withTaskExecutorPreference(EventLoopExecutor(eventLoop), operation: body)
    }

    private func checkOpen() throws {
        // What makes the check and the write one turn of the loop; a language mode in which the
        // closure above stopped hopping to its executor would fail here, not race silently.
        eventLoop.preconditionInEventLoop()
        guard !isClosed else { throw Closed() }
        Self.checkedOpen.withLock { $0 }?(self)
    }

    /// Called with the connection each time a statement found it open, just before writing
    /// the statement (a test seam: where it runs is what keeps a close out; nil in production).
    package static let checkedOpen = Mutex<(@Sendable (PostgresConnection) -> Void)?>(nil)

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

/// A task executor that runs its jobs on one NIO event loop.
final class EventLoopExecutor: TaskExecutor {
    let eventLoop: any EventLoop

    init(_ eventLoop: any EventLoop) { self.eventLoop = eventLoop }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        eventLoop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
