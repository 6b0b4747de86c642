import Synchronization

/// Test signals (River's `TestSignals` idea): each part counts the passes of its loop, and a test
/// awaits "one more renewal / claim / reconciliation passed" instead of polling state or sleeping.
/// Costs one lock per pass when nobody waits.
public final class CoordinatorSignals: Sendable {
    /// A loop whose passes can be awaited.
    public enum Pass: Sendable, Hashable, CaseIterable {
        case registration, renewal, claim, reconcile, idleSweep
        /// A check of the database's history (a failover, or a suspicion) ended.
        case databaseCheck
    }

    private struct Waiter {
        var id: UInt64
        var pass: Pass
        var target: Int
        var continuation: CheckedContinuation<Void, Never>
    }

    private struct State {
        var counts: [Pass: Int] = [:]
        var waiters: [Waiter] = []
        var nextID: UInt64 = 0
    }

    private let state = Mutex(State())

    /// Signals with every count at zero.
    public init() {}

    /// How many passes of `pass` have completed.
    public func count(_ pass: Pass) -> Int { state.withLock { $0.counts[pass, default: 0] } }

    func passed(_ pass: Pass) {
        let ready = state.withLock { state -> [Waiter] in
            state.counts[pass, default: 0] += 1
            let count = state.counts[pass, default: 0]
            let ready = state.waiters.filter { $0.pass == pass && $0.target <= count }
            state.waiters.removeAll { $0.pass == pass && $0.target <= count }
            return ready
        }
        for waiter in ready { waiter.continuation.resume() }
    }

    /// Returns once `pass` has completed more than `count` times (read `count(pass)` before
    /// triggering the work), or when the waiting task is cancelled.
    public func wait(_ pass: Pass, after count: Int) async {
        let id = state.withLock { state -> UInt64 in
            state.nextID += 1
            return state.nextID
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now = state.withLock { state -> Bool in
                    if Task.isCancelled || state.counts[pass, default: 0] > count { return true }
                    state.waiters.append(Waiter(id: id, pass: pass, target: count + 1, continuation: continuation))
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            let waiter = state.withLock { state -> Waiter? in
                guard let index = state.waiters.firstIndex(where: { $0.id == id }) else { return nil }
                return state.waiters.remove(at: index)
            }
            waiter?.continuation.resume()
        }
    }
}
