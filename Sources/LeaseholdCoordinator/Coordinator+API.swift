import CoreMetrics
import Foundation
import LeaseholdEngine
import LeaseholdKit
import LeaseholdRuntime
import LeaseholdStore
import Logging
import Synchronization

extension Coordinator {
    /// Creates a handler owned by this replica and starts it.
    /// - Parameters:
    ///   - handlerID: the client's id, or nil for a random one.
    /// - Throws: `EngineError` for an unknown workflow or a bad start event,
    ///   `CoordinatorError.handlerRunning` when the id exists, `.shuttingDown`.
    public func start(workflow name: String, startEvent: JSONValue, handlerID: String?) async throws -> HandlerRecord {
        try await create(
            try newHandler(workflow: name, startEvent: startEvent, handlerID: handlerID),
            serverChosenID: handlerID == nil)
    }

    /// `start`, then `awaitCompletion`; when the handler finishes here, its final checkpoint's
    /// answer is the result (no read of the record afterwards).
    /// - Throws: as `start` and `awaitCompletion`.
    ///
    /// With a server-chosen id (which no handler can have) the handler is not written first: it
    /// runs at once under a reserved token, and its first checkpoint creates it in the same commit,
    /// so a run that finishes in its first pass costs one write. With a client's id it is created
    /// first, so that an id in use is refused before any step runs; so it is while the replica
    /// may not hand out reserved tokens (`LeaseKeeper.takeToken`).
    public func run(workflow name: String, startEvent: JSONValue, handlerID: String?) async throws -> HandlerRecord {
        let new = try newHandler(workflow: name, startEvent: startEvent, handlerID: handlerID)
        host.expectCompletion(new.id, runID: new.runID)
        defer { host.forgetCompletion(new.id, runID: new.runID) }
        guard !host.isShuttingDown else { throw CoordinatorError.shuttingDown }
        // No token while the leases cannot be proven (not registered yet, self-fenced, checking
        // the database): created first then, as with a client's id.
        guard handlerID == nil, let token = try await keeper.takeToken() else {
            return try await awaitCompletion(
                try await create(new, serverChosenID: handlerID == nil).id, runID: new.runID)
        }
        return try await runUnwritten(new, token: token)
    }

    /// Releases a quarantined handler (`HandlerStore.releaseQuarantine`): it runs again, its
    /// steps isolated, on whichever replica claims it next.
    /// - Returns: false when it is not quarantined.
    public func releaseQuarantine(_ id: HandlerID) async throws -> Bool {
        guard try await store.releaseQuarantine(id) else { return false }
        metrics.quarantineReleases.increment()
        logger.warning("quarantined handler released by an operator", metadata: [LogKeys.handlerID: "\(id)"])
        return true
    }

    private func newHandler(workflow name: String, startEvent: JSONValue, handlerID: String?) throws -> NewHandler {
        let workflow = try registry.workflow(name)
        try workflow.validateStart(startEvent)
        if startEvent[ParentLink.startField] != nil {
            // Only the coordinator links a child to its parent (`startChild`).
            throw EngineError.invalidEvent(type: "StartEvent", reason: "'\(ParentLink.startField)' is reserved")
        }
        if let handlerID, !HandlerID.isValid(handlerID) { throw CoordinatorError.invalidHandlerID(handlerID) }
        return NewHandler(
            id: handlerID.map { HandlerID($0) } ?? HandlerID.random(from: context.ids), workflowName: name,
            runID: context.ids.uuidString(),
            startEvent: InboxEvent(id: "start", event: AnyEvent(type: EventType.startEventName, value: startEvent)))
    }

    func create(_ new: NewHandler, serverChosenID: Bool) async throws -> HandlerRecord {
        guard !host.isShuttingDown else { throw CoordinatorError.shuttingDown }
        // A lease this replica could not prove would be fenced before its first write. Waited
        // for, at most one TTL (a replica still registering, a renewal a loaded machine
        // delayed); past that nothing is sent, so the answer is certain.
        guard await keeper.awaitProvableLeases(within: configuration.leaseTTL) else {
            throw CoordinatorError.runNotStarted(new.id)
        }
        let created: ClaimedHandler
        do {
            created = try await store.create(new, owner: replicaID)
        } catch StoreError.handlerExists {
            throw CoordinatorError.handlerRunning(new.id)
        } catch StoreError.unavailable {
            // Sent, and no answer: it may have committed (a stalled database resumes and commits
            // it), and then it runs. Settled before anything is answered. Written, it is this
            // replica's under a token it never learnt: not run here; released as an orphan, it is
            // claimed (here or elsewhere) and runs.
            guard let record = try await settle(new, serverChosenID: serverChosenID) else {
                throw CoordinatorError.runNotStarted(new.id)
            }
            return record
        }
        metrics.handlersStarted.increment()
        await host.launch(created, reason: "created")
        return created.record
    }

    /// Sends an external event: durable in the inbox before this returns, then applied by whichever
    /// replica runs the handler (this one, after a reload, when it was hibernated). One statement
    /// validates the handler's workflow, appends, and claims a hibernated handler for this replica
    /// (see `HandlerHost.accept`).
    /// - Throws: `StoreError.handlerNotFound`, `.handlerFinished`; `EngineError` for a bad event.
    public func send(_ event: AnyEvent, to id: HandlerID, eventID: String = UUID().uuidString) async throws {
        let accepting = registry.workflows(accepting: event)
        guard !accepting.isEmpty else {
            // Valid for no workflow: which error depends on the handler (absent, finished, or its
            // workflow's reason for refusing the event).
            guard let record = try await store.handler(id) else { throw StoreError.handlerNotFound(id) }
            guard record.status == .running else { throw StoreError.handlerFinished(id) }
            try refuse(event, workflow: record.workflowName)
            return
        }
        let inbox = InboxEvent(id: eventID, event: event)
        let store = self.store
        let replica = replicaID
        let receipt = try await host.accept(id) { claim in
            try await store.appendInbox(id, inbox, accepting: accepting, from: replica, claim: claim)
        }
        guard receipt.accepted else {
            try refuse(event, workflow: receipt.workflowName ?? "")
            return
        }
        metrics.inboxEvents.increment()
    }

    /// Throws why `event` is not valid for a handler of the workflow `name` (the one the append
    /// found, so no second read).
    private func refuse(_ event: AnyEvent, workflow name: String) throws {
        let workflow = try registry.workflow(name)
        try workflow.validateExternal(event)
        // Not reached: the workflows the event is valid for did not include this one.
        throw EngineError.unknownEventType(workflow: workflow.name, type: event.type)
    }

    /// Cancels a handler wherever it runs (or sleeps); with `purge` also deletes it.
    /// - Returns: false when there is no such handler.
    public func cancel(_ id: HandlerID, purge: Bool) async throws -> Bool {
        let outcome: CancelOutcome
        do {
            outcome = try await store.cancel(id)
        } catch StoreError.handlerNotFound {
            return false
        }
        if case .cancelled = outcome, let handler = host.handler(id) {
            host.fence([handler], reason: "cancelled")
        }
        if case .cancelled = outcome { await cancelChildren(of: id) }
        if purge {
            // Only the run just cancelled (or found finished): the id may have been purged and
            // created again meanwhile, and that new run must not be deleted with it.
            let run: HandlerRecord
            switch outcome {
            case .cancelled(let record), .alreadyFinished(let record): run = record
            }
            // Deleted on purpose: not a handler the database lost (see `LeaseKeeper+FailoverCheck`).
            keeper.forget(Lease(handlerID: id, replicaID: replicaID, token: run.fencingToken))
            _ = try await store.delete(id, run: run.runID)
        }
        return true
    }

    /// Cancels the running descendants of a cancelled handler (their ids extend its id with `~`).
    /// After the parent's cancel is durable; should this replica stop in between, they run to
    /// their end and their ends find the parent finished (nothing is delivered).
    private func cancelChildren(of id: HandlerID) async {
        do {
            let children = try await store.handlers(
                HandlerFilter(statuses: [.running], idPrefix: "\(id.rawValue)~"))
            for child in children {
                if case .cancelled = try await store.cancel(child.id), let handler = host.handler(child.id) {
                    host.fence([handler], reason: "parent cancelled")
                }
            }
        } catch {
            logger.warning(
                "children of a cancelled handler not all cancelled",
                metadata: [LogKeys.handlerID: "\(id)", LogKeys.error: "\(error)"])
        }
    }

    /// Waits until the handler finishes, reading the store (works for handlers on any replica).
    /// With the `runID` of a run registered by `run`, takes the record its final checkpoint
    /// committed here, when there is one, instead of reading it.
    public func awaitCompletion(_ id: HandlerID, runID: String? = nil) async throws -> HandlerRecord {
        try await awaitCompletion(id, runID: runID, unwritten: nil)
    }

    /// - Parameter unwritten: the run's handler was launched unwritten; if it left memory still
    ///   unwritten (its lease could not be proven, the store refused or failed), the run failed.
    func awaitCompletion(_ id: HandlerID, runID: String?, unwritten: UnwrittenRun?) async throws -> HandlerRecord {
        var settled = false
        while true {
            let version = store.signals.logVersion(id.rawValue)
            // While the handler runs here its record cannot be finished (the runtime returns only
            // after its final checkpoint), so there is nothing to read; leaving memory signals.
            if host.handler(id) == nil {
                if let runID, let finished = host.completion(id, runID: runID) { return finished }
                if let unwritten, !unwritten.isWritten, !settled {
                    // Its steps began before its first checkpoint was to create it. Never sent:
                    // nothing was written and it will not go on. Sent with an unknown outcome (the
                    // write may still be in flight in a stalled database): settled first. Either
                    // way what its steps did may have happened: not a 503 ("it will not happen").
                    guard unwritten.wasAttempted else { throw CoordinatorError.runNotKept(id) }
                    guard let record = try await settle(unwritten.handler, serverChosenID: true) else {
                        throw CoordinatorError.runNotKept(id)
                    }
                    settled = true
                    if record.status.isFinished { return record }
                } else {
                    guard let record = try await store.handler(id) else { throw StoreError.handlerNotFound(id) }
                    if record.status.isFinished { return record }
                }
            }
            try Task.checkCancellation()
            await store.signals.waitForLogChange(id.rawValue, since: version, timeout: .seconds(1))
        }
    }
}
