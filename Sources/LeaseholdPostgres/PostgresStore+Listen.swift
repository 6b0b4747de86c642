import Foundation
import LeaseholdKit
import LeaseholdStore
import Logging
import PostgresNIO
import ServiceLifecycle
import Synchronization

/// The store's service: the LISTEN connection that turns NOTIFYs into local `signals`.
extension PostgresStore {
    /// Listens for NOTIFYs until shutdown, reconnecting after a dropped connection. After every
    /// (re)subscription all log readers are woken and the coordinator reconciles its handlers'
    /// inboxes, since notifications may have been missed.
    ///
    /// A LISTEN socket can also go silent without an error (half-open after a partition; keep-
    /// alive only covers idle pooled connections): the process NOTIFYs itself every `listenProbe`
    /// through the pool, and a connection that has not heard a probe three periods after it was
    /// sent is closed and replaced.
    public func run() async throws {
        await cancelWhenGracefulShutdown {
            // Two stages: the watchdog outlives the group commit writers, so that a flush stuck on
            // a dead connection is still cut (and the writers can end) after the LISTEN loop stops.
            await withDiscardingTaskGroup { outer in
                if let limit = self.requestTimeout {
                    outer.addTask {
                        await self.watchdog.run(limit: limit) { cut in
                            self.logger.warning(
                                "database requests unanswered, closed their connections",
                                metadata: ["count": "\(cut)", "limit": "\(limit)"])
                        }
                    }
                }
                await withDiscardingTaskGroup { inner in
                    if let groupCommit = self.groupCommit {
                        inner.addTask { await groupCommit.run { batch in await self.flush(batch) } }
                    }
                    await self.listenLoop()
                    inner.cancelAll()
                }
                outer.cancelAll()
            }
        }
    }

    private func listenLoop() async {
        var backoff = Backoff(.background)
        while !Task.isCancelled {
            let started = clock.now
            do {
                try await self.client.withConnection { connection in try await self.listen(on: connection) }
            } catch {
                if Task.isCancelled { return }
                self.logger.warning("listen connection lost", metadata: ["error": "\(String(reflecting: error))"])
            }
            // A connection that lived a while was a success: reconnect quickly.
            if clock.now - started > .seconds(5) { backoff.reset() }
            do { try await clock.sleep(for: backoff.next()) } catch { return }
        }
    }

    /// Listens on one connection until it fails or stops hearing this process's probes.
    private func listen(on connection: PostgresConnection) async throws {
        let session = listening.newSession()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                try await connection.listen(on: Notification.channel) { notifications in
                    self.signals.resubscribed()
                    for try await notification in notifications {
                        self.dispatch(notification.payload, session: session)
                    }
                }
                throw ListenEnded()
            }
            if let period = listenProbe {
                group.addTask { try await self.proveListening(session: session, period: period) }
            }
            defer { group.cancelAll() }
            do {
                try await group.next()
            } catch let error as ListenSilent {
                // Closing fails every operation on the connection, the LISTEN included. An error
                // here means it is closed already, which is what we wanted.
                do { try await connection.close() } catch {}
                throw error
            }
        }
    }

    /// Sends a probe every `period`; throws `ListenSilent` when a probe that was sent (the
    /// database took it) is not heard within three periods. Probes that cannot be sent (the
    /// database is down) prove nothing either way.
    private func proveListening(session: UInt64, period: Duration) async throws {
        var unheard: (number: UInt64, sentAt: Duration)?
        var number: UInt64 = 0
        while true {
            try await clock.sleep(for: period)
            if let oldest = unheard, listening.heard(session) >= oldest.number { unheard = nil }
            if let oldest = unheard, clock.now - oldest.sentAt > period * 3 {
                throw ListenSilent(session: session)
            }
            number += 1
            let sentAt = clock.now
            let payload = Notification.probe + instance + ":\(session):\(number)"
            do {
                try await withTimeLimit(period) {
                    try await self.guarded(gated: false) { connection -> Void in
                        try await connection.checkedQuery(Statements.notify(payload), logger: self.logger)
                    }
                }
                if unheard == nil { unheard = (number, sentAt) }
            } catch {
                // Not sent: the database or the pool is unavailable; the next period tries again.
            }
        }
    }

    private func dispatch(_ payload: String, session: UInt64) {
        guard !listening.isDeaf(session) else { return }
        if payload.hasPrefix(Notification.log) {
            signals.logChanged(String(payload.dropFirst(Notification.log.count)))
        } else if payload.hasPrefix(Notification.inbox) {
            signals.inboxChanged(String(payload.dropFirst(Notification.inbox.count)))
        } else if payload.hasPrefix(Notification.probe) {
            // Ours only: p:<instance>:<session>:<n>.
            let parts = payload.dropFirst(Notification.probe.count).split(separator: ":")
            if parts.count == 3, parts[0] == instance, let probeSession = UInt64(parts[1]),
                let number = UInt64(parts[2])
            {
                listening.hear(session: probeSession, number: number)
            }
        }
    }

    /// What group commit has done so far (nil when it is off).
    package var groupCommitStats: GroupCommitStats? { groupCommit?.stats }

    /// Whether group commit's writers run (false when it is off).
    package var groupCommitRunning: Bool { groupCommit?.isRunning ?? false }

    /// Writes waiting for a group commit flush (0 when it is off).
    package var groupCommitQueued: Int { groupCommit?.queued ?? 0 }

    /// LISTEN sessions opened so far (the first subscription is 1).
    public var listenSessions: UInt64 { listening.sessions }

    /// Probes the current LISTEN session has heard.
    public var probesHeard: UInt64 { listening.heard(listening.sessions) }

    /// Test hook: the current LISTEN connection stops delivering anything, as a half-open socket
    /// does; the liveness probe must replace it.
    package func deafenCurrentListen() { listening.deafenCurrent() }
}

struct ListenEnded: Error {}

struct ListenSilent: Error, CustomStringConvertible {
    var session: UInt64
    var description: String { "LISTEN connection \(session) stopped hearing its own probes" }
}

/// The LISTEN sessions and the probes each has heard.
final class ListenState: Sendable {
    private struct State {
        var session: UInt64 = 0
        var heard: UInt64 = 0
        var deaf: Set<UInt64> = []
    }
    private let state = Mutex(State())

    func newSession() -> UInt64 {
        state.withLock { state in
            state.session += 1
            state.heard = 0
            return state.session
        }
    }

    func hear(session: UInt64, number: UInt64) {
        state.withLock { state in
            if session == state.session { state.heard = max(state.heard, number) }
        }
    }

    func heard(_ session: UInt64) -> UInt64 { state.withLock { $0.session == session ? $0.heard : 0 } }
    var sessions: UInt64 { state.withLock { $0.session } }
    func deafenCurrent() { state.withLock { _ = $0.deaf.insert($0.session) } }
    func isDeaf(_ session: UInt64) -> Bool { state.withLock { $0.deaf.contains(session) } }
}
