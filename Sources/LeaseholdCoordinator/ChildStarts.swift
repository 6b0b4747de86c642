import Foundation
import LeaseholdEngine
import LeaseholdKit
import LeaseholdStore
import Logging
import Synchronization

/// How a host's runtimes create the child handlers their steps ask for
/// (`StepContext.runWorkflow`): bound by the coordinator once it exists (creating a handler is
/// the coordinator's: its id check, its lease, its launch).
final class ChildStarts: Sendable {
    typealias Start = @Sendable (_ request: ChildRequest, _ parent: HandlerID) async throws -> Void
    private let start = Mutex<Start?>(nil)

    func bind(_ start: @escaping Start) { self.start.withLock { $0 = start } }

    func callAsFunction(_ request: ChildRequest, parent: HandlerID) async throws {
        guard let start = start.withLock({ $0 }) else { throw CoordinatorError.shuttingDown }
        try await start(request, parent)
    }
}

extension Coordinator {
    /// Creates the child a step of `parent` asked for, its start event carrying the link to the
    /// parent. One that exists already (asked for again after a failover, or by a stale owner)
    /// is left alone: a child starts once. A child that can never start (an unknown workflow, a
    /// start event its workflow refuses) ends at once as failed in the parent's inbox, so the
    /// parent's step fails with the reason rather than wait for ever.
    func startChild(_ request: ChildRequest, parent: HandlerID) async throws {
        let link = ParentLink(handlerID: parent.rawValue, childID: request.id)
        let new: NewHandler
        do {
            let workflow = try registry.workflow(request.workflow)
            try workflow.validateStart(request.start)
            guard HandlerID.isValid(request.id) else { throw CoordinatorError.invalidHandlerID(request.id) }
            var start = request.start.objectValue ?? [:]
            start[ParentLink.startField] = link.json
            new = NewHandler(
                id: HandlerID(request.id), workflowName: workflow.name, runID: context.ids.uuidString(),
                startEvent: InboxEvent(
                    id: "start", event: AnyEvent(type: EventType.startEventName, value: .object(start))))
        } catch let error as EngineError {
            try await refuseChild(link, reason: "\(error)")
            return
        } catch let error as CoordinatorError {
            try await refuseChild(link, reason: "\(error)")
            return
        }
        do {
            _ = try await create(new, serverChosenID: false)
        } catch CoordinatorError.handlerRunning {
            return  // created before: this is the same request again
        }
    }

    private func refuseChild(_ link: ParentLink, reason: String) async throws {
        logger.warning(
            "child workflow cannot start",
            metadata: [LogKeys.handlerID: "\(link.childID)", LogKeys.reason: "\(reason)"])
        _ = try await store.appendInbox(
            HandlerID(link.handlerID),
            InboxEvent(id: link.noticeID, event: link.notice(status: .failed, error: reason)), accepting: nil,
            from: nil, claim: false)
    }
}
