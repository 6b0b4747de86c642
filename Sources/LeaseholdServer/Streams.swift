import Foundation
import HTTPTypes
import Hummingbird
import LeaseholdEngine
import LeaseholdKit
import LeaseholdStore
import ServiceLifecycle
import Synchronization

extension HTTPField.Name {
    static let lastEventID = HTTPField.Name("Last-Event-ID")!
    static let accelBuffering = HTTPField.Name("X-Accel-Buffering")!
}

extension LeaseholdAPI {
    /// `GET /events/{id}`: the handler's events from the durable log, after a cursor, then a tail
    /// woken by the store's notifications (with a polling fallback). A reader never touches the
    /// live handler, so it can neither keep it in memory nor slow it down; any replica serves any
    /// handler, hibernated or not.
    func stream(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let handlerID = try id(context)
        let sse = try flag(request, "sse", default: true)
        let includeInternal = try flag(request, "include_internal", default: false)
        let qualifiedName = try flag(request, "include_qualified_name", default: true)
        guard let record = try await store.handler(handlerID) else { throw APIError(.notFound, "Handler not found") }
        let start = try cursorFrom(request, sse: sse, record: record)
        if record.status.isFinished && start >= record.lastSequence {
            return Response(status: .noContent)
        }
        guard let slot = StreamSlot(streams) else {
            throw APIError(.serviceUnavailable, "too many open streams on this replica", headers: [.retryAfter: "1"])
        }
        let headers: HTTPFields = [
            .contentType: sse ? "text/event-stream" : "application/x-ndjson",
            .cacheControl: "no-cache",
            .accelBuffering: "no",
        ]
        let store = self.store
        let configuration = self.configuration
        return Response(
            status: .ok, headers: headers,
            body: ResponseBody { writer in
                // Held by this closure: released when the response is done with it, also when the
                // body never runs (the client left before the head was written).
                _ = slot
                let stopping = OnceFlag()
                let watch = WriteWatch(clock: store.signals.clock)
                // The writer moves to the stream task below and is used by it alone; this task only
                // waits. The watchdog beside it ends a stream whose client stopped reading (a write
                // pending longer than the stall timeout), which would otherwise hold its slot and
                // its connection forever: cancelling the stream task fails the pending write.
                let moved = MovedWriter(writer)
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        var writer = moved.writer
                        var cursor = start
                        // On graceful shutdown the stream ends. An SSE client that reconnects
                        // (browsers, with Last-Event-ID) resumes elsewhere; the Python client ends
                        // its iteration on a clean close and must resume with after_sequence
                        // (docs/wire.md).
                        try await withGracefulShutdownHandler {
                            try await Self.tail(
                                handlerID, from: &cursor, store: store, configuration: configuration, sse: sse,
                                includeInternal: includeInternal, qualifiedName: qualifiedName, stopping: stopping,
                                watch: watch, writer: &writer)
                        } onGracefulShutdown: {
                            stopping.set()
                            store.signals.logChanged(handlerID.rawValue)
                        }
                        try await writer.finish(nil)
                    }
                    group.addTask {
                        try await watch.untilStalled(longerThan: configuration.streamStallTimeout)
                        throw StreamStalled()
                    }
                    defer { group.cancelAll() }
                    try await group.next()
                }
            })
    }

    private func cursorFrom(_ request: Request, sse: Bool, record: HandlerRecord) throws -> Int64 {
        if sse, let header = request.headers[.lastEventID],
            let last = Int64(header.trimmingCharacters(in: .whitespaces)),
            last >= -1
        {
            return last
        }
        guard let text = request.uri.queryParameters.get("after_sequence"), !text.isEmpty, text != "now" else {
            return record.lastSequence
        }
        guard let value = Int64(text), value >= -1 else {
            throw APIError(.badRequest, "after_sequence must be 'now', -1 or a sequence number, got '\(text)'")
        }
        return value
    }

    static let writePiece = 64 * 1024

    private static func tail(
        _ id: HandlerID, from cursor: inout Int64, store: any HandlerStore, configuration: ServerConfiguration,
        sse: Bool,
        includeInternal: Bool, qualifiedName: Bool, stopping: OnceFlag, watch: WriteWatch,
        writer: inout any ResponseBodyWriter
    ) async throws {
        let heartbeat = Duration.seconds(configuration.heartbeatSeconds)
        if sse {
            // The response head goes out with the first body write: without this comment a client
            // of a handler with nothing new would see no response until the first heartbeat.
            try await watch.timing { try await writer.write(ByteBuffer(string: ": open\n\n")) }
        }
        let clock = store.signals.clock
        var lastWrite = clock.now
        let tail = LogTail(
            store: store, id: id, after: cursor, poll: .seconds(configuration.pollSeconds), existenceCheck: heartbeat)
        for try await records in tail {
            if Task.isCancelled || stopping.isSet { return }
            var out = ""
            for record in records {
                cursor = record.sequence
                if record.isInternal && !includeInternal && !record.isTerminal { continue }
                let line = WireFormat.envelope(record, qualifiedName: qualifiedName).jsonString
                out += sse ? "id: \(record.sequence)\ndata: \(line)\n\n" : line + "\n"
            }
            if !out.isEmpty {
                // In pieces of at most 64 KiB: a write waits until the previous one has drained, so
                // the stall timeout then measures a client that stopped reading, not a slow one
                // draining a large batch.
                var rest = Substring(out)
                while !rest.isEmpty {
                    let piece = rest.utf8.prefix(Self.writePiece)
                    let chunk = ByteBuffer(bytes: piece)
                    rest = Substring(rest.utf8.dropFirst(piece.count))
                    try await watch.timing { try await writer.write(chunk) }
                }
                lastWrite = clock.now
            } else if sse && clock.now - lastWrite >= heartbeat {
                try await watch.timing { try await writer.write(ByteBuffer(string: ": heartbeat\n\n")) }
                lastWrite = clock.now
            }
        }
    }
}

/// Counts open streams so one replica cannot be exhausted by readers.
final class StreamGate: Sendable {
    let limit: Int
    private let open = Mutex(0)

    init(limit: Int) { self.limit = limit }

    func enter() -> Bool {
        open.withLock { count in
            guard count < limit else { return false }
            count += 1
            return true
        }
    }

    func leave() { open.withLock { $0 -= 1 } }
    var count: Int { open.withLock { $0 } }
}

/// One open stream's place under `--max-streams`, released when the last reference goes.
final class StreamSlot: Sendable {
    private let gate: StreamGate

    init?(_ gate: StreamGate) {
        guard gate.enter() else { return nil }
        self.gate = gate
    }

    deinit { gate.leave() }
}

/// A stream's client stopped taking writes for longer than the stall timeout.
struct StreamStalled: Error, CustomStringConvertible {
    var description: String { "event stream ended: the client stopped reading" }
}

/// Since when a stream's write has been pending (nil: none is).
final class WriteWatch: Sendable {
    private let pendingSince = Mutex<Duration?>(nil)
    private let clock: ReplicaClock

    init(clock: ReplicaClock) { self.clock = clock }

    func timing(_ write: () async throws -> Void) async throws {
        let now = clock.now
        pendingSince.withLock { $0 = now }
        defer { pendingSince.withLock { $0 = nil } }
        try await write()
    }

    /// Returns once a write has been pending longer than `limit`. - Throws: on cancellation.
    func untilStalled(longerThan limit: Duration) async throws {
        let period = max(min(limit / 4, .seconds(1)), .milliseconds(10))
        while true {
            try await clock.sleep(for: period)
            if let since = pendingSince.withLock({ $0 }), clock.now - since > limit { return }
        }
    }
}

/// Carries a response's body writer into the one task that writes it. Unchecked: the writer is
/// not `Sendable`, and it is safe here only because the task that made the box never touches the
/// writer again (it only waits for the writing task).
final class MovedWriter: @unchecked Sendable {
    let writer: any ResponseBodyWriter
    init(_ writer: any ResponseBodyWriter) { self.writer = writer }
}
