import Synchronization

/// Tasks waiting for something about a key, woken when it may have happened: the one waiter
/// registry (the coordinator's test signals and the store's log readers use it).
///
/// `wait(for:until:)` checks its condition under the registry's lock before it parks, and `wake`
/// takes that lock, so a change made before `wake(key)` is called is never missed: either the
/// check sees it, or the waiter is parked when the wake comes. A woken waiter checks again (a
/// wake may be for another waiter's condition). A waiter whose task is cancelled returns at once.
public final class WaiterRegistry<Key: Hashable & Sendable>: Sendable {
    private struct Waiter {
        var id: UInt64
        var continuation: CheckedContinuation<Void, Never>
    }

    private struct State {
        var nextID: UInt64 = 0
        var waiters: [Key: [Waiter]] = [:]
    }

    private let state = Mutex(State())

    /// A registry with nobody waiting.
    public init() {}

    /// Returns once `done()` holds, or when the waiting task is cancelled. `done` runs under this
    /// registry's lock: it may take its owner's own lock, never this registry's.
    public func wait(for key: Key, until done: () -> Bool) async {
        while !Task.isCancelled {
            if await park(key, unless: done) { return }
        }
    }

    /// Wakes every task waiting on `key`.
    public func wake(_ key: Key) {
        let woken = state.withLock { $0.waiters.removeValue(forKey: key) ?? [] }
        for waiter in woken { waiter.continuation.resume() }
    }

    /// Wakes every waiting task.
    public func wakeAll() {
        let woken = state.withLock { state -> [Waiter] in
            defer { state.waiters = [:] }
            return state.waiters.values.flatMap { $0 }
        }
        for waiter in woken { waiter.continuation.resume() }
    }

    /// How many tasks wait right now.
    public var count: Int { state.withLock { $0.waiters.values.reduce(0) { $0 + $1.count } } }

    /// Parks until woken or cancelled; returns at once, true, when `done()` already holds.
    private func park(_ key: Key, unless done: () -> Bool) async -> Bool {
        let id = state.withLock { state -> UInt64 in
            state.nextID += 1
            return state.nextID
        }
        var held = false
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now = state.withLock { state -> Bool in
                    if done() {
                        held = true
                        return true
                    }
                    if Task.isCancelled { return true }
                    state.waiters[key, default: []].append(Waiter(id: id, continuation: continuation))
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            let waiter = state.withLock { state -> Waiter? in
                guard var list = state.waiters[key], let index = list.firstIndex(where: { $0.id == id }) else {
                    return nil
                }
                let waiter = list.remove(at: index)
                state.waiters[key] = list.isEmpty ? nil : list
                return waiter
            }
            waiter?.continuation.resume()
        }
        return held
    }
}
