import Foundation
import LeaseholdEngine
import LeaseholdPostgres
import LeaseholdStore
import LeaseholdTestSupport
import Logging
import Testing

/// Group commit: many handlers' writes in one commit, each still fenced and answered on its own.
/// The batches here are made deterministic with a long linger: a flush starts exactly when
/// `maxBatch` writes are queued.
@Suite("Group commit", .enabled(if: TestDatabase.isConfigured, "needs the test Postgres (scripts/test)"))
struct GroupCommitTests {
    static let ttl = PostgresStoreTests.ttl
    static var logger: Logger { PostgresStoreTests.logger }
    static let held = GroupCommitSettings(maxBatch: 8, linger: .seconds(60), writers: 1)

    static func checkpoint(_ next: Int64, log: [Int64]) -> Checkpoint {
        Checkpoint(
            state: StoreConformanceTests.state(next), log: log.map { StoreConformanceTests.record($0) },
            consumedInbox: [])
    }

    /// Creates `count` handlers at once (one flush when `count` is the batch size).
    static func create(_ store: PostgresStore, _ count: Int, prefix: String = "g") async throws -> [Lease] {
        try await withThrowingTaskGroup(of: Lease.self) { group in
            for index in 0..<count {
                group.addTask {
                    try await store.create(StoreConformanceTests.new("\(prefix)\(index)"), owner: "r1").lease
                }
            }
            var leases: [Lease] = []
            for try await lease in group { leases.append(lease) }
            return leases.sorted { $0.handlerID.rawValue < $1.handlerID.rawValue }
        }
    }

    /// Checkpoints every lease at once; answers each one's outcome by handler id.
    static func checkpointAll(_ store: PostgresStore, _ writes: [(Lease, Checkpoint)]) async
        -> [HandlerID: Result<Void, any Error>]
    {
        await withTaskGroup(of: (HandlerID, Result<Void, any Error>).self) { group in
            for (lease, checkpoint) in writes {
                group.addTask {
                    do {
                        try await store.checkpoint(checkpoint, lease: lease)
                        return (lease.handlerID, .success(()))
                    } catch {
                        return (lease.handlerID, .failure(error))
                    }
                }
            }
            var outcomes: [HandlerID: Result<Void, any Error>] = [:]
            for await (id, outcome) in group { outcomes[id] = outcome }
            return outcomes
        }
    }

    @Test("writes of many handlers share one commit, and a stale lease fails only its own write")
    func sharedCommitFencesEachWrite() async throws {
        try await TestDatabase.withStore(groupCommit: Self.held) { store, _ in
            try await store.register("r1", address: "test://r1", ttl: Self.ttl)
            let leases = try await Self.create(store, 8)
            #expect(store.groupCommitStats?.flushes == 1)
            // Three leases taken away (released; r2 claims them under higher tokens).
            for lease in leases.prefix(3) { try await store.release(nil, lease: lease) }
            try await store.register("r2", address: "test://r2", ttl: Self.ttl)
            let taken = try await store.claim("r2", limit: 10, only: nil)
            #expect(Set(taken.map(\.record.id)) == Set(leases.prefix(3).map(\.handlerID)))

            let outcomes = await Self.checkpointAll(store, leases.map { ($0, Self.checkpoint(2, log: [0, 1])) })
            #expect(store.groupCommitStats == GroupCommitStats(flushes: 2, writes: 16, largest: 8, splits: 0))
            for lease in leases.prefix(3) {
                #expect(throws: StoreError.leaseLost(lease.handlerID)) { try outcomes[lease.handlerID]?.get() }
                #expect(try await store.events(lease.handlerID, after: -1, limit: 10).isEmpty)
            }
            for lease in leases.dropFirst(3) {
                #expect(throws: Never.self) { try outcomes[lease.handlerID]?.get() }
                #expect(try await store.events(lease.handlerID, after: -1, limit: 10).map(\.sequence) == [0, 1])
                #expect(try await store.handler(lease.handlerID)?.lastSequence == 1)
            }
        }
    }

    @Test("in one flush, each checkpoint that finishes its handler is answered its own committed record")
    func finishingCheckpointsAnswerTheirRecords() async throws {
        try await TestDatabase.withStore(groupCommit: Self.held) { store, _ in
            try await store.register("r1", address: "test://r1", ttl: Self.ttl)
            let leases = try await Self.create(store, 8)
            let answers = try await withThrowingTaskGroup(of: (HandlerID, HandlerRecord?).self) { group in
                for (index, lease) in leases.enumerated() {
                    // Even ones finish (a terminal record), odd ones keep running.
                    let finishing = index % 2 == 0
                    let checkpoint = Checkpoint(
                        state: StoreConformanceTests.state(2, status: finishing ? .completed : .running),
                        log: [
                            StoreConformanceTests.record(0),
                            StoreConformanceTests.record(1, finishing ? "StopEvent" : "Tick", terminal: finishing),
                        ],
                        consumedInbox: ["start"])
                    group.addTask { (lease.handlerID, try await store.checkpoint(checkpoint, lease: lease)) }
                }
                var answers: [HandlerID: HandlerRecord?] = [:]
                for try await (id, answer) in group { answers[id] = answer }
                return answers
            }
            #expect(store.groupCommitStats?.flushes == 2)  // the creations, then the checkpoints
            for (index, lease) in leases.enumerated() {
                let read = try #require(try await store.handler(lease.handlerID))
                let answer = try #require(answers[lease.handlerID])
                if index % 2 == 0 {
                    #expect(answer == read)
                    #expect(read.status == .completed && read.result?.type == "StopEvent")
                } else {
                    #expect(answer == nil)
                    #expect(read.status == .running)
                }
            }
        }
    }

    @Test("a finished record this replica cannot read back does not fail the write, nor its batch")
    func unreadableAnswerDoesNotFailTheWrite() async throws {
        try await TestDatabase.withStore(
            groupCommit: GroupCommitSettings(maxBatch: 2, linger: .seconds(60), writers: 1)
        ) {
            store, _ in
            try await store.register("r1", address: "test://r1", ttl: Self.ttl)
            let leases = try await Self.create(store, 2, prefix: "deep")
            // Nested deeper than a stored record is read back (a workflow may wrap what came in).
            var deep: JSONValue = "bottom"
            for _ in 0..<1_100 { deep = .array([deep]) }
            func finishing(_ value: JSONValue) -> Checkpoint {
                Checkpoint(
                    state: StoreConformanceTests.state(1, status: .completed),
                    log: [
                        LogRecord(
                            sequence: 0, type: "StopEvent", value: ["result": value], types: nil, qualifiedName: "q",
                            isInternal: false, isTerminal: true)
                    ], consumedInbox: ["start"])
            }
            async let deepAnswer = store.checkpoint(finishing(deep), lease: leases[0])
            async let plainAnswer = store.checkpoint(finishing("plain"), lease: leases[1])
            let (unreadable, plain) = try await (deepAnswer, plainAnswer)
            #expect(unreadable == nil)  // written, answered without its record
            #expect(plain?.status == .completed)
            #expect(store.groupCommitStats?.flushes == 2)  // the creations, then both checkpoints together
            #expect(try await store.events(leases[1].handlerID, after: -1, limit: 10).count == 1)
            await #expect(throws: EngineError.self) { _ = try await store.handler(leases[0].handlerID) }
        }
    }

    @Test("a logged number JSON cannot hold (NaN, infinity) is refused before anything is written")
    func nonFiniteNumbersRefused() async throws {
        try await TestDatabase.withStore { store, _ in
            try await store.register("r1", address: "test://r1", ttl: Self.ttl)
            let lease = try await store.create(StoreConformanceTests.new("nan"), owner: "r1").lease
            let record = LogRecord(
                sequence: 0, type: "Tick", value: ["n": .double(.nan)], types: nil, qualifiedName: "q",
                isInternal: false, isTerminal: false)
            await #expect(throws: EncodingError.self) {
                try await store.checkpoint(
                    Checkpoint(state: StoreConformanceTests.state(1), log: [record], consumedInbox: []), lease: lease)
            }
            #expect(try await store.events("nan", after: -1, limit: 10).isEmpty)
        }
    }

    @Test("a write the database refuses fails alone: the rest of its batch is written")
    func refusedWriteFailsAlone() async throws {
        try await TestDatabase.withStore(groupCommit: Self.held) { store, _ in
            try await store.register("r1", address: "test://r1", ttl: Self.ttl)
            let leases = try await Self.create(store, 8)
            // The first skips sequence 1 within its records: the event log refuses it, and with it
            // the whole batch. (A checkpoint that does not continue the row's last sequence is
            // refused before its records are written: `checkpointExpectsTheLastSequence`.)
            let writes = leases.enumerated().map { index, lease in
                (lease, index == 0 ? Self.checkpoint(3, log: [0, 2]) : Self.checkpoint(1, log: [0]))
            }
            let outcomes = await Self.checkpointAll(store, writes)
            #expect(store.groupCommitStats?.splits == 1)
            // The refusal is the log's contiguity check (migration 0005), naming the handler and
            // the skipped sequence: not any error.
            guard case .failure(StoreError.corrupt(let reason))? = outcomes[leases[0].handlerID] else {
                Issue.record("expected the log's refusal, got \(String(describing: outcomes[leases[0].handlerID]))")
                return
            }
            #expect(reason.contains("event log of handler \(leases[0].handlerID) would skip sequence 1"), "\(reason)")
            #expect(try await store.events(leases[0].handlerID, after: -1, limit: 10).isEmpty)
            for lease in leases.dropFirst() {
                #expect(throws: Never.self) { try outcomes[lease.handlerID]?.get() }
                #expect(try await store.events(lease.handlerID, after: -1, limit: 10).map(\.sequence) == [0])
            }
        }
    }

    @Test("two creations of one id: one is created, the other told it exists")
    func duplicateCreation() async throws {
        try await TestDatabase.withStore(groupCommit: GroupCommitSettings(maxBatch: 8, writers: 2)) { store, _ in
            try await store.register("r1", address: "test://r1", ttl: Self.ttl)
            let ids = ["same", "same", "other", "third"]
            let outcomes = await withTaskGroup(of: Result<ClaimedHandler, any Error>.self) { group in
                for id in ids {
                    group.addTask {
                        do {
                            return .success(try await store.create(StoreConformanceTests.new(id), owner: "r1"))
                        } catch {
                            return .failure(error)
                        }
                    }
                }
                var all: [Result<ClaimedHandler, any Error>] = []
                for await outcome in group { all.append(outcome) }
                return all
            }
            let created = outcomes.compactMap { try? $0.get() }
            #expect(created.map(\.record.id.rawValue).sorted() == ["other", "same", "third"])
            let refused = outcomes.filter { outcome in
                guard case .failure(let error) = outcome, let storeError = error as? StoreError,
                    case .handlerExists(let id) = storeError
                else { return false }
                return id == "same"
            }
            #expect(refused.count == 1)
            #expect(try await store.pendingInbox("same").map(\.id) == ["start"])
        }
    }

    @Test("a row another transaction holds does not hold up the rest of its flush")
    func lockedRowDoesNotHoldTheFlush() async throws {
        try await TestDatabase.withStore(groupCommit: nil) { plain, url in
            try await plain.register("r1", address: "test://r1", ttl: Self.ttl)
            var leases: [Lease] = []
            for index in 0..<8 {
                leases.append(try await plain.create(StoreConformanceTests.new("l\(index)"), owner: "r1").lease)
            }
            // Requests may wait 8 s: a flush waits 1 s for a row lock, then is written one by one.
            let batched = PostgresStore(
                client: plain.client, logger: Self.logger, requestTimeout: .seconds(8), groupCommit: Self.held)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await batched.run() }
                defer { group.cancelAll() }
                try #require(await eventually { batched.groupCommitRunning })
                let leases = leases
                try await PostgresStoreTests.withRowLocked("l0", url) {
                    try await withThrowingTaskGroup(of: Void.self) { writes in
                        for lease in leases {
                            writes.addTask { try await batched.checkpoint(Self.checkpoint(1, log: [0]), lease: lease) }
                        }
                        // The seven others commit while l0's row is still locked.
                        let others = try await eventually(timeout: .seconds(20)) {
                            var written = 0
                            for lease in leases.dropFirst() {
                                written += try await plain.events(lease.handlerID, after: -1, limit: 1).count
                            }
                            return written == 7
                        }
                        #expect(others)
                        #expect(try await plain.events("l0", after: -1, limit: 1).isEmpty)
                        #expect(batched.groupCommitStats?.splits == 1)
                        writes.cancelAll()
                    }
                }
            }
        }
    }

    @Test("a queued write whose caller gives up is withdrawn, and nothing of it is written")
    func cancelledWriteIsWithdrawn() async throws {
        try await TestDatabase.withStore(groupCommit: nil) { plain, _ in
            try await plain.register("r1", address: "test://r1", ttl: Self.ttl)
            let lease = try await plain.create(StoreConformanceTests.new("c"), owner: "r1").lease
            let batched = PostgresStore(
                client: plain.client, logger: Self.logger,
                groupCommit: GroupCommitSettings(maxBatch: 100, linger: .seconds(60), writers: 1))
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await batched.run() }
                defer { group.cancelAll() }
                try #require(await eventually { batched.groupCommitRunning })
                try await withThrowingTaskGroup(of: Void.self) { writes in
                    writes.addTask { try await batched.checkpoint(Self.checkpoint(1, log: [0]), lease: lease) }
                    // Queued (the writer lingers for 60 s), then given up.
                    try #require(await eventually { batched.groupCommitQueued == 1 })
                    writes.cancelAll()
                    await #expect(throws: CancellationError.self) { try await writes.next() }
                }
                #expect(batched.groupCommitQueued == 0)
                #expect(try await plain.events("c", after: -1, limit: 10).isEmpty)
                #expect(batched.groupCommitStats?.flushes == 0)
            }
        }
    }
}
