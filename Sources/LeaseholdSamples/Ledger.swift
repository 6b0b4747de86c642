import LeaseholdEngine
import Synchronization

/// An external system a step writes to, fenced by the step's lease token (Kleppmann's pattern):
/// it keeps, per handler, the highest token that has posted, and refuses a posting under a lower
/// one. A replica that lost its lease mid-step cannot overwrite the newer owner's postings.
public protocol FencedLedger: Sendable {
    /// Posts `amount` as posting number `posting` of `handler` (idempotent per posting: a re-run
    /// under a newer lease overwrites it).
    /// - Returns: false when a higher token has already posted for this handler (the write was fenced).
    func post(handler: String, posting: Int, amount: Int, token: Int64) async throws -> Bool
}

/// The single-process ledger (the in-memory store's companion).
public final class InMemoryLedger: FencedLedger {
    private struct Book {
        var highest: Int64 = .min
        var postings: [Int: (amount: Int, token: Int64)] = [:]
    }
    private let books = Mutex<[String: Book]>([:])

    /// An empty ledger.
    public init() {}

    /// See `FencedLedger.post(handler:posting:amount:token:)`.
    public func post(handler: String, posting: Int, amount: Int, token: Int64) async throws -> Bool {
        books.withLock { books in
            var book = books[handler] ?? Book()
            guard token >= book.highest else { return false }
            book.highest = token
            book.postings[posting] = (amount, token)
            books[handler] = book
            return true
        }
    }

    /// The sum of a handler's postings.
    public func balance(_ handler: String) -> Int {
        books.withLock { $0[handler]?.postings.values.reduce(0) { $0 + $1.amount } ?? 0 }
    }
}

/// A step's write was refused by the external system: a newer lease has posted.
public struct LedgerFenced: Error, CustomStringConvertible {
    /// The token the refused posting was made under.
    public var token: Int64
    /// Says which token was refused and why.
    public var description: String { "ledger refused a posting under fencing token \(token): a newer owner has posted" }
}

extension Samples {
    /// The `ledger` sample's event for one posting made, streamed and sent on to the next.
    public struct Posted: Event {
        /// Its type: `Posted` with an integer `posting`.
        public static let eventType = EventType("Posted", fields: [FieldSpec("posting", .integer)])
        /// The number of the posting made, from 1.
        public var posting: Int
    }

    /// `{"postings": int ≥ 1, "amount": int, "tick_ms": int?}` → posts `amount` to `ledger`
    /// `postings` times, one step run per posting, each under the step's fencing token; streams
    /// `Posted {"posting": i}`; result = the total posted.
    public static func ledger(_ ledger: any FencedLedger) throws -> Workflow {
        try Workflow(
            name: "ledger",
            start: [
                FieldSpec("postings", .integer(minimum: 1)), FieldSpec("amount", .integer),
                FieldSpec("tick_ms", .integer(minimum: 0), required: false),
            ],
            events: [Posted.eventType],
            steps: [
                Step("post", accepts: ["StartEvent", "Posted"], emits: ["Posted", "StopEvent"], streams: ["Posted"]) {
                    event, context in
                    if event.type == "StartEvent" {
                        context.set("postings", event.value["postings"] ?? 1)
                        context.set("amount", event.value["amount"] ?? 0)
                        context.set("tick_ms", event.value["tick_ms"] ?? 0)
                    }
                    let posting = event.type == "StartEvent" ? 1 : (event.value["posting"]?.intValue ?? 0) + 1
                    let postings = context.get("postings")?.intValue ?? 1
                    let amount = context.get("amount")?.intValue ?? 0
                    if let pause = context.get("tick_ms")?.intValue, pause > 0 {
                        try await Task.sleep(for: .milliseconds(pause))
                    }
                    guard
                        try await ledger.post(
                            handler: context.handlerID, posting: posting, amount: amount,
                            token: context.fencingToken)
                    else { throw LedgerFenced(token: context.fencingToken) }
                    let done = Posted(posting: posting)
                    try context.write(done)
                    if posting >= postings {
                        context.stop(.int(amount * postings))
                    } else {
                        try context.send(done)
                    }
                }
            ])
    }
}
