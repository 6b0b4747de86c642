import LeaseholdEngine
import LeaseholdKit
import LeaseholdRuntime
import LeaseholdStore

/// The hibernation policy: a handler that has only waited (for an external event, or a timer
/// further away than the idle timeout) for `idleTimeout` is hibernated — its runtime stops and
/// `HandlerHost` writes its snapshot and releases its lease in one fenced transaction, refused
/// while its inbox holds an event.
struct IdleSweeper: ReplicaPart, Sendable {
    let idleTimeout: Duration
    let context: ReplicaContext

    /// How often the sweep looks: a quarter of the timeout, at most once a second.
    var period: Duration { min(idleTimeout / 4, .seconds(1)) }

    func run(host: HandlerHost) async {
        while !Task.isCancelled {
            do { try await clock.sleep(for: period) } catch { return }
            sweep(host: host)
        }
    }

    /// Stops (for hibernation) every live handler idle for the timeout with no timer due sooner.
    /// - Returns: the ids it asked to hibernate.
    @discardableResult
    func sweep(host: HandlerHost) -> [HandlerID] {
        defer { signals.passed(.idleSweep) }
        let now = clock.now
        let wall = clock.wallSeconds
        var stopped: [HandlerID] = []
        for handler in host.liveHandlers {
            // Not yet written: nothing to hibernate into (its first checkpoint is in flight or retrying).
            guard handler.isCreated else { continue }
            guard let since = handler.runtime.idleSince, now - since >= idleTimeout else { continue }
            if let deadline = handler.runtime.state.nextDeadline, deadline - wall < idleTimeout.seconds { continue }
            handler.stop(.hibernate)
            stopped.append(handler.id)
        }
        return stopped
    }
}
