import Foundation
import LeaseholdEngine
import Testing

/// Upgrades: what one version stores (a snapshot, a log record, an inbox event, an isolated step
/// run) loads in every later one, because handlers hibernate across upgrades and old and new
/// replicas run side by side during a rolling update. `Fixtures/<version>/` holds each stored shape
/// as that version wrote it; every version's fixtures must decode with this code, and a restored
/// state must resume. A new version adds its own directory (`LEASEHOLD_WRITE_FIXTURES=<dir>`
/// writes this version's shapes there) and never edits an old one.
@Suite("Stored shapes of earlier versions")
struct StoredShapesTests {
    /// A state with every part a snapshot can hold: context, a run in flight (with a received
    /// event), a waiter, an early external event, a fan-in buffer, timers of each action, a
    /// terminal-less running status, and the counters.
    static func richState() -> HandlerState {
        var state = HandlerState(workflowName: "approval")
        state.started = true
        state.context = ["count": 3, "name": "x", "nested": ["a": [1, 2.5, true, .null]]]
        let start = AnyEvent(type: "StartEvent", value: ["request": "pay"])
        let run = StepRun(id: 4, step: "ask", event: start, attempt: 2, received: nil)
        state.inFlight = [run]
        state.waiters = [
            Waiter(
                run: StepRun(id: 3, step: "ask", event: start, attempt: 1, received: nil),
                eventType: "HumanResponseEvent")
        ]
        state.pendingExternal = [AnyEvent(type: "HumanResponseEvent", value: ["response": "yes"])]
        state.collected = ["collect": [1, 2]]
        state.timers = [
            DurableTimer(id: 0, deadline: 1_700_000_000.5, action: .deliver(AnyEvent(type: "TimerRang"))),
            DurableTimer(id: 1, deadline: 1_700_000_001, action: .retry(run)),
            DurableTimer(id: 2, deadline: 1_700_000_002, action: .workflowTimeout),
        ]
        state.nextRunID = 5
        state.nextTimerID = 3
        state.nextSequence = 12
        return state
    }

    static let record = LogRecord(
        sequence: 7, type: "StopEvent", value: ["result": "done"], types: nil,
        qualifiedName: "workflows.events.StopEvent", isInternal: false, isTerminal: true)

    static let event = AnyEvent(type: "HumanResponseEvent", value: ["response": "yes"])

    static func encoded<T: Encodable>(_ value: T) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
        return try encoder.encode(value)
    }

    static var fixtureVersions: [URL] {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")
        return ((try? FileManager.default.contentsOfDirectory(at: root, includingPropertiesForKeys: nil)) ?? [])
            .sorted { $0.path < $1.path }
    }

    @Test func thisVersionsShapesCanBeWritten() throws {
        guard let directory = ProcessInfo.processInfo.environment["LEASEHOLD_WRITE_FIXTURES"] else { return }
        let url = URL(fileURLWithPath: directory)
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        try Self.encoded(Self.richState()).write(to: url.appendingPathComponent("handler-state.json"))
        try Self.encoded(Self.record).write(to: url.appendingPathComponent("log-record.json"))
        try Self.encoded(Self.event).write(to: url.appendingPathComponent("inbox-event.json"))
    }

    @Test func everyEarlierVersionsShapesLoad() throws {
        let versions = Self.fixtureVersions
        #expect(!versions.isEmpty, "no fixtures found")
        for version in versions {
            let data = { (name: String) in try Data(contentsOf: version.appendingPathComponent(name)) }
            let state = try JSONDecoder().decode(HandlerState.self, from: try data("handler-state.json"))
            #expect(state == Self.richState(), "\(version.lastPathComponent): the snapshot changed meaning")
            let record = try JSONDecoder().decode(LogRecord.self, from: try data("log-record.json"))
            #expect(record == Self.record)
            let event = try JSONDecoder().decode(AnyEvent.self, from: try data("inbox-event.json"))
            #expect(event == Self.event)
            // The restored state resumes: its run is started again and its timers re-armed.
            let workflow = try Workflow(
                name: "approval", start: [FieldSpec("request", .string)], external: [EventType.humanResponse],
                steps: [
                    Step("ask", accepts: ["StartEvent"], emits: ["StopEvent"], waitsFor: ["HumanResponseEvent"]) {
                        _, _ in
                    }
                ])
            let (_, commands) = HandlerMachine(workflow: workflow).reduce(state, Tick(now: 1_700_000_000, .resume))
            #expect(commands.filter { if case .runStep = $0 { true } else { false } }.count == 1)
            #expect(commands.filter { if case .armTimer = $0 { true } else { false } }.count == 3)
        }
    }
}
