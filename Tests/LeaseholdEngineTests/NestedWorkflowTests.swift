import Foundation
import LeaseholdEngine
import LeaseholdSamples
import Testing

/// Nested workflows in the reducer: which children a parent asks for, under which ids, and what
/// it does with their ends — the same after a snapshot, so a failover neither loses a child nor
/// starts one twice.
@Suite("Nested workflows")
struct NestedWorkflowTests {
    static func end(_ childID: String, _ status: String = "completed", result: JSONValue? = nil) -> AnyEvent {
        var value: [String: JSONValue] = ["child_id": .string(childID), "status": .string(status)]
        if let result { value["result"] = result }
        return AnyEvent(type: EventType.childFinished.name, value: .object(value))
    }

    func started(_ children: Int) async throws -> EngineDriver {
        var driver = EngineDriver(try Samples.nested())
        driver.apply(.start(AnyEvent(type: "StartEvent", value: ["children": .int(children), "count_to": 2])))
        await driver.runToEnd()
        return driver
    }

    @Test("children one after another, each asked for once, under ids derived from the run")
    func sequentialChildren() async throws {
        var driver = try await started(3)
        // The first run asks for the first child and waits; nothing else happens until it ends.
        #expect(driver.childRequests.map(\.id) == ["~0.1"])
        #expect(driver.childRequests.first?.workflow == "counter")
        #expect(driver.childRequests.first?.start == ["count_to": 2])
        #expect(driver.state.isQuiescent)
        driver.apply(.external(Self.end("~0.1", result: 2)))
        await driver.runToEnd()
        #expect(driver.childRequests.map(\.id) == ["~0.1", "~0.2"])
        driver.apply(.external(Self.end("~0.2", result: 2)))
        await driver.runToEnd()
        driver.apply(.external(Self.end("~0.3", result: 2)))
        await driver.runToEnd()
        #expect(driver.childRequests.map(\.id) == ["~0.1", "~0.2", "~0.3"])
        #expect(driver.state.result == ["total": 6])
    }

    @Test("a restored parent asks for its waiting child again, under the same id")
    func resumeAsksAgain() async throws {
        let driver = try await started(2)
        var restored = EngineDriver(try Samples.nested(), state: try driver.snapshot())
        restored.apply(.resume)
        #expect(restored.childRequests.map(\.id) == ["~0.1"])
        restored.apply(.external(Self.end("~0.1", result: 2)))
        await restored.runToEnd()
        #expect(restored.childRequests.map(\.id) == ["~0.1", "~0.2"])
    }

    @Test("a run restored from before its wait asks for the same child; an end that came first is used")
    func endBeforeTheWait() async throws {
        var driver = EngineDriver(try Samples.nested())
        driver.apply(.start(AnyEvent(type: "StartEvent", value: ["children": 1, "count_to": 2])))
        // The checkpoint with the wait was lost: the restored run is in flight again, and the
        // child's end (durable in the inbox) is delivered before the run asks again.
        let beforeTheWait = try driver.snapshot()
        var restored = EngineDriver(try Samples.nested(), state: beforeTheWait)
        restored.apply(.external(Self.end("~0.1", result: 7)))
        restored.apply(.resume)
        await restored.runToEnd()
        #expect(restored.state.result == ["total": 7])
        #expect(restored.childRequests.isEmpty, "the child had ended: it is not asked for again")
    }

    @Test("a child that failed fails the parent's step with the child's error")
    func failedChild() async throws {
        var driver = try await started(1)
        driver.apply(.external(Self.end("~0.1", "failed")))
        await driver.runToEnd()
        #expect(driver.state.status == .failed)
        #expect(driver.state.error?.contains("child workflow '~0.1' failed") == true)
    }

    @Test("the parent link rides in the start event and leaves it; the final state reports to the parent")
    func parentLink() async throws {
        var driver = EngineDriver(try Samples.echo())
        driver.apply(
            .start(
                AnyEvent(
                    type: "StartEvent",
                    value: ["message": "hi", ParentLink.startField: ["handler_id": "p", "child_id": "p~0.1"]])))
        #expect(driver.pending.first?.event.value == ["message": "hi"])
        await driver.runToEnd()
        #expect(driver.state.parent == ParentLink(handlerID: "p", childID: "p~0.1"))
        let notice = try #require(driver.state.parentNotice)
        #expect(notice.parent == "p")
        #expect(notice.inboxID == "child:p~0.1")
        #expect(notice.event == Self.end("p~0.1", result: "hi"))
    }
}
