import LeaseholdEngine
import LeaseholdKit

/// A handler's committed log after a cursor, as it grows: the one way anything follows a log
/// (SSE and NDJSON streams, the CLI's `run`).
///
/// Each element is the next batch of records in order, or an empty batch when a wait for more
/// passed without any (so a consumer can send a heartbeat or look at a stop flag). The sequence
/// ends after the terminal record, or when the handler no longer exists (purged). Waits are woken
/// by the store's signals and bounded by `poll`, so a lost notification delays but never loses
/// a record.
public struct LogTail: AsyncSequence, Sendable {
    /// A batch of records in sequence order; empty when a wait passed without any.
    public typealias Element = [LogRecord]

    let store: any HandlerStore
    let id: HandlerID
    let after: Int64
    let batch: Int
    let poll: Duration
    let existenceCheck: Duration

    /// - Parameters:
    ///   - after: the cursor: records with a higher sequence are read (-1: from the start).
    ///   - batch: at most this many records per read.
    ///   - poll: the longest wait for a change before looking again.
    ///   - existenceCheck: how often an idle tail checks that the handler still exists.
    public init(
        store: any HandlerStore, id: HandlerID, after: Int64, batch: Int = 500, poll: Duration = .seconds(1),
        existenceCheck: Duration = .seconds(15)
    ) {
        self.store = store
        self.id = id
        self.after = after
        self.batch = batch
        self.poll = poll
        self.existenceCheck = existenceCheck
    }

    /// An iterator starting after `after`.
    public func makeAsyncIterator() -> Iterator {
        Iterator(tail: self, cursor: after, lastCheck: store.signals.clock.now)
    }

    /// Reads the tail batch by batch.
    public struct Iterator: AsyncIteratorProtocol {
        let tail: LogTail
        /// The sequence of the last record returned.
        public private(set) var cursor: Int64
        /// When the handler's existence was last checked, on the store's clock.
        var lastCheck: Duration
        var finished = false

        /// The next batch, or an empty one after a wait of at most `poll`; nil once the terminal
        /// record was returned or the handler is gone.
        public mutating func next() async throws -> [LogRecord]? {
            guard !finished else { return nil }
            let key = tail.id.rawValue
            let version = tail.store.signals.logVersion(key)
            let records = try await tail.store.events(tail.id, after: cursor, limit: tail.batch)
            if let last = records.last {
                if let terminal = records.firstIndex(where: \.isTerminal) {
                    finished = true
                    cursor = records[terminal].sequence
                    return Array(records[...terminal])
                }
                cursor = last.sequence
                return records
            }
            let now = tail.store.signals.clock.now
            if now - lastCheck >= tail.existenceCheck {
                lastCheck = now
                // A purged handler has no terminal event to wait for.
                guard try await tail.store.handler(tail.id) != nil else {
                    finished = true
                    return nil
                }
            }
            await tail.store.signals.waitForLogChange(key, since: version, timeout: tail.poll)
            return []
        }
    }
}
