import Foundation
import LeaseholdCoordinator
import LeaseholdEngine
import LeaseholdKit
import LeaseholdStore
import Synchronization

/// Clients of the samples' shapes, each asking any live replica, retrying on another after a
/// failure: counters (a stream of ticks, each applied once), approvals answered later from any
/// replica (after the handler hibernated, usually), timers, and `run`s of echo. What each call
/// answered goes to the history.
struct Workload {
    let cluster: Cluster

    enum Job: Sendable {
        case counter(HandlerID, count: Int)
        case approval(HandlerID, answerAfter: Duration)
        case timer(HandlerID, seconds: Int)
        case echo(message: String)
        case ledger(HandlerID, postings: Int)
    }

    static let clients = 6
    /// One call's limit: a replica that dies under a call leaves its client waiting this long.
    static let callLimit = Duration.seconds(10)

    func run() async {
        let jobs = cluster.random.withLock { random in
            (0..<cluster.options.handlers).map { index -> (Job, Duration) in
                let id = HandlerID("h\(index)")
                let job: Job =
                    switch random.next() % 5 {
                    case 0: .counter(id, count: Int(3 + random.next() % 6))
                    case 1: .approval(id, answerAfter: random.duration(.seconds(1), .seconds(20)))
                    case 2: .timer(id, seconds: Int(1 + random.next() % 10))
                    case 3: .ledger(id, postings: Int(10 + random.next() % 40))
                    default: .echo(message: "m\(index)")
                    }
                return (job, random.duration(.zero, cluster.options.window - .seconds(30)))
            }
        }
        await withTaskGroup(of: Void.self) { clients in
            // A steady stream of short `run`s besides (each a handler created by its first
            // checkpoint, under a reserved token): what a failover meets most often in production.
            clients.addTask {
                var index = 0
                while cluster.clock.now.offset < cluster.options.window - .seconds(30) {
                    let pause = cluster.random.withLock { $0.duration(.milliseconds(200), .milliseconds(800)) }
                    try? await cluster.clock.sleep(for: pause)
                    await perform(.echo(message: "s\(index)"))
                    index += 1
                }
            }
            for client in 0..<Self.clients {
                let mine = jobs.enumerated().filter { $0.offset % Self.clients == client }.map(\.element)
                    .sorted { $0.1 < $1.1 }
                clients.addTask {
                    for (job, at) in mine {
                        try? await cluster.clock.sleep(until: .init(offset: at))
                        await perform(job)
                    }
                }
            }
        }
    }

    /// Retries until `call` answers, or the liveness deadline passes (then it is given up: the
    /// checker does not require what was never acknowledged).
    private func untilAnswered(_ call: @escaping @Sendable (Coordinator) async throws -> History.Answer.Kind?) async {
        let deadline = cluster.plan.healedAt + cluster.options.livenessBound
        while cluster.clock.now.offset < deadline, !Task.isCancelled {
            if let (slot, coordinator) = cluster.anyReplica() {
                do {
                    let answer = try await withTimeLimit(Self.callLimit, clock: ReplicaClock(cluster.clock)) {
                        try await call(coordinator)
                    }
                    if let answer {
                        cluster.history.answer(
                            .init(at: cluster.clock.now.offset, replica: cluster.replicaID(slot), kind: answer))
                    }
                    return
                } catch {
                    cluster.history.answer(
                        .init(at: cluster.clock.now.offset, replica: cluster.replicaID(slot), kind: .failed("\(error)"))
                    )
                }
            }
            try? await cluster.clock.sleep(for: .seconds(1))
        }
    }

    private func start(_ id: HandlerID, _ workflow: String, _ start: JSONValue) async {
        await untilAnswered { coordinator in
            do {
                _ = try await coordinator.start(workflow: workflow, startEvent: start, handlerID: id.rawValue)
            } catch CoordinatorError.handlerRunning {
                // An earlier attempt whose answer was lost created it.
            }
            return .started(id)
        }
    }

    private func perform(_ job: Job) async {
        switch job {
        case .counter(let id, let count):
            await start(id, "counter", ["count_to": .int(count)])
        case .ledger(let id, let postings):
            await start(id, "ledger", ["postings": .int(postings), "amount": .int(1)])
        case .timer(let id, let seconds):
            await start(id, "timer", ["seconds": .int(seconds)])
        case .approval(let id, let after):
            await start(id, "approval", ["request": .string("q-\(id)")])
            try? await cluster.clock.sleep(for: after)
            let response = "yes-\(id)"
            await untilAnswered { coordinator in
                do {
                    try await coordinator.send(
                        AnyEvent(type: "HumanResponseEvent", value: ["response": .string(response)]), to: id,
                        eventID: "answer-\(id)")
                } catch StoreError.handlerNotFound, StoreError.handlerFinished {
                    return nil  // never started (its start was not acknowledged), or finished
                }
                return .sent(id, eventID: "answer-\(id)", response: response)
            }
        case .echo(let message):
            await untilAnswered { coordinator in
                let record = try await coordinator.run(
                    workflow: "echo", startEvent: ["message": .string(message)], handlerID: nil)
                return .ran(record.id, status: record.status, result: record.result?.value)
            }
        }
    }
}
