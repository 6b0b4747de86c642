import Foundation
import LeaseholdKit
import PostgresNIO
import Synchronization

/// Ends store requests whose statement never answers, by closing their connection.
///
/// postgres-nio does not cancel a query it has sent: task cancellation does not reach it, and a
/// request can wait forever. After a partition longer than `tcp_user_timeout` the server has
/// dropped the session without a word, and a client whose request was already acknowledged has
/// nothing to retransmit, so it never hears of it (the pool's keep-alive queries only run on idle
/// connections). Closing the connection is the one way to end such a request: it then fails with
/// an unknown outcome, as after any dropped connection (every write is fenced, and a retried
/// checkpoint is recognised by its sequence numbers).
///
/// Every statement a store request sends first registers here (`InFlightRequest.begin`), and the
/// watchdog — one loop in the store's service, scanning every quarter of the limit — closes the
/// connection of a request whose latest statement has waited longer than the limit. A request
/// that was cut sends nothing more: a statement written to a connection that is being closed is
/// lost inside postgres-nio and would wait forever. That is also why a cancelled caller does not
/// close the connection at once (its next statement could race the close); it waits for the
/// watchdog, at most the limit and a scan period.
final class RequestWatchdog: Sendable {
    private struct State {
        var next: UInt64 = 0
        var running: [UInt64: InFlightRequest] = [:]
    }
    private let state = Mutex(State())
    private let clock: ReplicaClock

    init(clock: ReplicaClock) { self.clock = clock }

    /// Starts a request on `connection`; `finish` it when done.
    func start(on connection: PostgresConnection) -> InFlightRequest {
        state.withLock { state in
            state.next += 1
            let request = InFlightRequest(id: state.next, connection: connection, clock: clock)
            state.running[state.next] = request
            return request
        }
    }

    func finish(_ request: InFlightRequest) {
        request.finish()
        _ = state.withLock { $0.running.removeValue(forKey: request.id) }
    }

    /// Closes the connections of requests whose statement has waited `limit`; returns how many.
    func cutStale(limit: Duration) -> Int {
        let now = clock.now
        let candidates = state.withLock { Array($0.running.values) }
        var cut = 0
        for request in candidates {
            if let connection = request.cutIfWaiting(since: now - limit) {
                // Outside the request's lock; it refuses every later statement already.
                let closing: EventLoopFuture<Void> = connection.close()
                _ = closing
                cut += 1
            }
        }
        return cut
    }

    /// Scans every quarter of `limit` until cancelled.
    func run(limit: Duration, onCut: @Sendable (Int) -> Void) async {
        while !Task.isCancelled {
            do { try await clock.sleep(for: limit / 4) } catch { return }
            let cut = cutStale(limit: limit)
            if cut > 0 { onCut(cut) }
        }
    }
}

/// One store request: its connection, and when its latest statement was sent.
final class InFlightRequest: Sendable {
    private struct State {
        var statementSince: Duration?
        var cut = false
        var done = false
    }
    let id: UInt64
    private let connection: PostgresConnection
    private let clock: ReplicaClock
    private let state = Mutex(State())

    /// The request the current task runs (set by `PostgresStore.guarded`).
    @TaskLocal static var current: InFlightRequest?

    init(id: UInt64, connection: PostgresConnection, clock: ReplicaClock) {
        self.id = id
        self.connection = connection
        self.clock = clock
    }

    /// Called before each statement: refuses once the request was cut.
    func begin() throws {
        try state.withLock { state in
            if state.cut { throw PostgresConnection.Closed() }
            state.statementSince = clock.now
        }
    }

    fileprivate func finish() { state.withLock { $0.done = true } }

    /// Marks the request cut when its latest statement was sent before `deadline`; returns the
    /// connection to close.
    fileprivate func cutIfWaiting(since deadline: Duration) -> PostgresConnection? {
        state.withLock { state in
            guard !state.done, !state.cut, let since = state.statementSince, since < deadline else { return nil }
            state.cut = true
            return connection
        }
    }
}
