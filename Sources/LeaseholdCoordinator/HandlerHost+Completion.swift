import LeaseholdStore
import Synchronization

/// `run` requests waiting for their handler to finish. When the final checkpoint is written here,
/// the store answers the record it committed; it is handed to the waiters, so a `run` answers
/// without reading the record back (one statement and one round trip less per `run`). Only
/// awaited handlers are kept, and only while awaited.
struct Completions {
    /// How many `run` requests wait for each handler.
    var awaited: [HandlerID: Int] = [:]
    var records: [HandlerID: HandlerRecord] = [:]
}

extension HandlerHost {
    /// Before the handler is created, so that its final record cannot be missed.
    func expectCompletion(_ id: HandlerID) {
        completions.withLock { $0.awaited[id, default: 0] += 1 }
    }

    func forgetCompletion(_ id: HandlerID) {
        completions.withLock { completions in
            guard let count = completions.awaited[id] else { return }
            if count > 1 {
                completions.awaited[id] = count - 1
            } else {
                completions.awaited[id] = nil
                completions.records[id] = nil
            }
        }
    }

    /// A checkpoint finished the handler, committing this record.
    func finished(_ record: HandlerRecord) {
        completions.withLock { completions in
            if completions.awaited[record.id] != nil { completions.records[record.id] = record }
        }
    }

    /// The finished handler's record, when its final checkpoint was written here while awaited.
    func completion(_ id: HandlerID) -> HandlerRecord? {
        completions.withLock { $0.records[id] }
    }
}
