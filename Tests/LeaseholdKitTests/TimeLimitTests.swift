import LeaseholdKit
import Synchronization
import Testing

/// The one timeout race: the body's value or error when it ends first; the limit's error when the
/// limit passes first, with the body cancelled and awaited, or ended by `whenLimitPasses` when it
/// does not honour cancellation.
@Suite("Time limit", .timeLimit(.minutes(1)))
struct TimeLimitTests {
    struct BodyFailed: Error {}
    struct LimitPassed: Error {}

    @Test func aBodyThatEndsFirstGivesItsValue() async throws {
        let value = try await withTimeLimit(.seconds(30)) { 42 }
        #expect(value == 42)
    }

    @Test func aBodysOwnErrorIsNeverTakenForTheLimit() async {
        await #expect(throws: BodyFailed.self) {
            try await withTimeLimit(.seconds(30), timedOut: { LimitPassed() }, { throw BodyFailed() })
        }
    }

    @Test func theLimitCancelsTheBodyAndThrows() async {
        let cancelled = OnceFlag()
        await #expect(throws: TimeLimitExceeded.self) {
            try await withTimeLimit(.milliseconds(20)) {
                do { try await Task.sleep(for: .seconds(60)) } catch { cancelled.set() }
            }
        }
        // Awaited, not left behind: the body saw its cancellation before the call returned.
        #expect(cancelled.isSet)
    }

    @Test func whenLimitPassesEndsABodyThatIgnoresCancellation() async {
        // A body that only its own resource's end can stop (as a statement postgres-nio has sent
        // ends only when its connection closes).
        let resource = Mutex<CheckedContinuation<Void, Never>?>(nil)
        let parked = OnceFlag()
        await #expect(throws: LimitPassed.self) {
            try await withTimeLimit(
                .milliseconds(20), timedOut: { LimitPassed() },
                whenLimitPasses: {
                    for _ in 0..<1_000_000 where !parked.isSet { await Task.yield() }  // (bounded)
                    resource.withLock { $0.take() }?.resume()
                },
                {
                    await withCheckedContinuation { continuation in
                        resource.withLock { $0 = continuation }
                        parked.set()
                    }
                })
        }
    }
}
