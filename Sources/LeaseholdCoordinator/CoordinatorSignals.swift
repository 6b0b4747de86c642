import LeaseholdKit
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

    private let counts = Mutex<[Pass: Int]>([:])
    private let waiters = WaiterRegistry<Pass>()

    /// Signals with every count at zero.
    public init() {}

    /// How many passes of `pass` have completed.
    public func count(_ pass: Pass) -> Int { counts.withLock { $0[pass, default: 0] } }

    func passed(_ pass: Pass) {
        counts.withLock { $0[pass, default: 0] += 1 }
        waiters.wake(pass)
    }

    /// Returns once `pass` has completed more than `count` times (read `count(pass)` before
    /// triggering the work), or when the waiting task is cancelled.
    public func wait(_ pass: Pass, after count: Int) async {
        await waiters.wait(for: pass) { self.count(pass) > count }
    }
}
