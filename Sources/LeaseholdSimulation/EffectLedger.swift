import LeaseholdSamples

/// An external system the `ledger` sample posts to, as an unfenced one would: every post is
/// accepted, takes simulated time (a remote call), and is recorded in the history with the token
/// it was made under. The checker then sees what self-fencing alone protects: a replica whose
/// lease another replica took must have stopped its steps before that claim.
final class EffectLedger: FencedLedger {
    let clock: SimulatedClock
    let history: History
    let chaos: Chaos

    init(clock: SimulatedClock, history: History, chaos: Chaos) {
        self.clock = clock
        self.history = history
        self.chaos = chaos
    }

    func post(handler: String, posting: Int, amount: Int, token: Int64) async throws -> Bool {
        try await clock.sleep(for: chaos.remoteCall())
        history.effect(.init(at: clock.now.offset, handler: handler, posting: posting, token: token))
        return true
    }
}
