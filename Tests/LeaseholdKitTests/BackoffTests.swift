import LeaseholdKit
import Testing

/// The one retry schedule: its waits, its caps and its reset are the stated constants.
@Suite("Backoff")
struct BackoffTests {
    @Test func workSomeoneWaitsOnDoublesFrom50msTo500ms() {
        var backoff = Backoff(.waitedOn)
        let waits = (0..<7).map { _ in backoff.next() }
        #expect(waits == [50, 100, 200, 400, 500, 500, 500].map { Duration.milliseconds($0) })
    }

    @Test func backgroundWorkDoublesFrom50msTo2s() {
        var backoff = Backoff(.background)
        let waits = (0..<8).map { _ in backoff.next() }
        #expect(waits == [50, 100, 200, 400, 800, 1600, 2000, 2000].map { Duration.milliseconds($0) })
    }

    @Test func aResetStartsAgainAtTheFirstWait() {
        var backoff = Backoff(.background)
        for _ in 0..<5 { _ = backoff.next() }
        backoff.reset()
        #expect(backoff.next() == Backoff.first)
    }
}
