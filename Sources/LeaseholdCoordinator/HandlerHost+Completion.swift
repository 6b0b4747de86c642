import LeaseholdStore
import Synchronization

/// `run` requests waiting for their handler to finish. When the final checkpoint is written here,
/// the store answers the record it committed; it is handed to the waiters, so a `run` answers
/// without reading the record back (one statement and one round trip less per `run`). Only
/// awaited runs are kept, and only while awaited. Keyed by run, not only by handler id: a handler
/// purged and created again under the same id is another run, and must not be answered the
/// record of the one before.
struct Completions {
    struct Run: Hashable {
        var id: HandlerID
        var runID: String
    }

    /// How many `run` requests wait for each run.
    var awaited: [Run: Int] = [:]
    var records: [Run: HandlerRecord] = [:]
}

extension HandlerHost {
    /// Before the handler is created, so that its final record cannot be missed.
    func expectCompletion(_ id: HandlerID, runID: String) {
        completions.withLock { $0.awaited[Completions.Run(id: id, runID: runID), default: 0] += 1 }
    }

    func forgetCompletion(_ id: HandlerID, runID: String) {
        let run = Completions.Run(id: id, runID: runID)
        completions.withLock { completions in
            guard let count = completions.awaited[run] else { return }
            if count > 1 {
                completions.awaited[run] = count - 1
            } else {
                completions.awaited[run] = nil
                completions.records[run] = nil
            }
        }
    }

    /// A checkpoint finished the handler, committing this record.
    func finished(_ record: HandlerRecord) {
        let run = Completions.Run(id: record.id, runID: record.runID)
        completions.withLock { completions in
            if completions.awaited[run] != nil { completions.records[run] = record }
        }
    }

    /// The finished run's record, when its final checkpoint was written here while awaited.
    func completion(_ id: HandlerID, runID: String) -> HandlerRecord? {
        completions.withLock { $0.records[Completions.Run(id: id, runID: runID)] }
    }
}
