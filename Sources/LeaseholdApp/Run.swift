import ArgumentParser
import Foundation
import LeaseholdCoordinator
import LeaseholdEngine
import LeaseholdServer
import LeaseholdStore
import Logging

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run one workflow in this process (in-memory store) and print its events and result.",
        discussion: "Example: leasehold run counter --start '{\"count_to\": 5}'")

    @Argument(help: ArgumentHelp("Workflow name (\(Run.workflowNames))")) var workflow: String
    @Option(help: "Start event fields as JSON") var start: String = "{}"
    @Flag(name: .customLong("include-internal"), help: "Also print internal step events") var includeInternal = false

    /// The application's workflows' names, for the help (from its in-memory set-up).
    static var workflowNames: String {
        let resources = ApplicationResources(databaseURL: nil, environment: [:], logger: Logger(label: "help"))
        return ((try? LeaseholdApplication.current?.registry(resources).names) ?? []).joined(separator: ", ")
    }

    func run() async throws {
        var logger = Logger(label: "leasehold")
        logger.logLevel = .error
        let resources = ApplicationResources(
            databaseURL: nil, environment: ProcessInfo.processInfo.environment, logger: logger)
        let registry = try LeaseholdApplication.running.registry(resources)
        guard registry.names.contains(workflow) else {
            throw fail("unknown workflow '\(workflow)'; known: \(registry.names.joined(separator: ", "))")
        }
        let startValue: JSONValue
        do {
            startValue = try JSONValue.parse(start)
        } catch {
            throw fail("--start: \(error)")
        }
        let store = InMemoryStore()
        let coordinator = Coordinator(
            store: store, registry: registry,
            configuration: CoordinatorConfiguration(replicaID: "local", address: "in-process", idleTimeout: nil),
            logger: logger)
        let outcome: HandlerRecord = try await resources.withPoolsRunning {
            try await run(workflow: workflow, start: startValue, coordinator: coordinator, store: store)
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

    /// Runs the coordinator until the handler's terminal record is printed.
    private func run(workflow: String, start: JSONValue, coordinator: Coordinator, store: InMemoryStore)
        async throws -> HandlerRecord
    {
        try await withThrowingTaskGroup(of: HandlerRecord?.self) { group in
            group.addTask {
                try await coordinator.run()
                return nil
            }
            defer { group.cancelAll() }
            let record: HandlerRecord
            do {
                record = try await coordinator.start(workflow: workflow, startEvent: start, handlerID: nil)
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
    }
}
