import ArgumentParser
import Foundation
import LeaseholdCoordinator
import LeaseholdEngine
import LeaseholdSamples
import LeaseholdServer
import LeaseholdStore
import Logging

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run one workflow in this process (in-memory store) and print its events and result.",
        discussion: "Example: leasehold run counter --start '{\"count_to\": 5}'")

    @Argument(help: "Workflow name (echo, counter, approval, fanout, timer, flaky)") var workflow: String
    @Option(help: "Start event fields as JSON") var start: String = "{}"
    @Flag(name: .customLong("include-internal"), help: "Also print internal step events") var includeInternal = false

    func run() async throws {
        let registry = try Samples.registry()
        guard registry.names.contains(workflow) else {
            throw fail("unknown workflow '\(workflow)'; known: \(registry.names.joined(separator: ", "))")
        }
        let startValue: JSONValue
        do {
            startValue = try JSONValue.parse(start)
        } catch {
            throw fail("--start: \(error)")
        }
        var logger = Logger(label: "leasehold")
        logger.logLevel = .error
        let store = InMemoryStore()
        let coordinator = Coordinator(
            store: store, registry: registry,
            configuration: CoordinatorConfiguration(replicaID: "local", address: "in-process", idleTimeout: nil),
            logger: logger)
        let outcome: HandlerRecord = try await withThrowingTaskGroup(of: HandlerRecord?.self) { group in
            group.addTask {
                try await coordinator.run()
                return nil
            }
            defer { group.cancelAll() }
            let record: HandlerRecord
            do {
                record = try await coordinator.start(workflow: workflow, startEvent: startValue, handlerID: nil)
            } catch let error as EngineError {
                throw fail("\(error)")
            }
            for try await records in LogTail(store: store, id: record.id, after: -1) {
                // The tail ends after the terminal record.
                for event in records where includeInternal || !event.isInternal {
                    print(
                        ["sequence": .int(Int(event.sequence)), "type": .string(event.type), "value": event.value]
                            as JSONValue)
                }
            }
            return try await store.handler(record.id) ?? record
        }
        switch outcome.status {
        case .completed:
            print((["result": outcome.result?.value["result"] ?? .null] as JSONValue).jsonString)
        default:
            print(
                (["status": .string(outcome.status.rawValue), "error": outcome.error.map(JSONValue.string) ?? .null]
                    as JSONValue).jsonString)
            throw ExitCode(1)
        }
    }
}

extension JSONValue: CustomStringConvertible {
    public var description: String { jsonString }
}
