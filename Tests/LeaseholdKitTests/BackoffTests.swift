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

/// `wait(on:before:)`: a retry loop bounded in time takes a wait only when it ends before the deadline.
@Suite("Backoff bounded in time", .timeLimit(.minutes(1)))
struct BackoffDeadlineTests {
    @Test func aWaitThatWouldPassTheDeadlineIsNotTaken() async throws {
        let clock = ReplicaClock.system
        var backoff = Backoff(.waitedOn)
        let before = clock.now
        // The first wait (50 ms) would end past a deadline 10 ms away: refused at once.
        #expect(try await backoff.wait(on: clock, before: before + .milliseconds(10)) == false)
        #expect(clock.now - before < .milliseconds(50))
    }

    @Test func aWaitThatEndsBeforeTheDeadlineIsTaken() async throws {
        let clock = ReplicaClock.system
        var backoff = Backoff(.waitedOn)
        let before = clock.now
        #expect(try await backoff.wait(on: clock, before: before + .seconds(30)))
        #expect(clock.now - before >= Backoff.first)
        #expect(backoff.next() == .milliseconds(100))  // the schedule moved on
    }
}
