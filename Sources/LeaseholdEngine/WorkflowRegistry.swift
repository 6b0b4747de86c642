/// The workflows a server offers, by name.
public struct WorkflowRegistry: Sendable {
    /// The registered workflows by name.
    public private(set) var workflows: [String: Workflow] = [:]

    /// A registry of `workflows`.
    /// - Throws: `EngineError.duplicateWorkflow` when two share a name.
    public init(_ workflows: [Workflow] = []) throws {
        for workflow in workflows { try register(workflow) }
    }

    /// - Throws: `EngineError.duplicateWorkflow` when the name is taken.
    public mutating func register(_ workflow: Workflow) throws {
        guard workflows[workflow.name] == nil else { throw EngineError.duplicateWorkflow(workflow.name) }
        workflows[workflow.name] = workflow
    }

    /// The registered names, sorted.
    public var names: [String] { workflows.keys.sorted() }

    /// - Throws: `EngineError.unknownWorkflow`.
    public func workflow(_ name: String) throws -> Workflow {
        guard let workflow = workflows[name] else { throw EngineError.unknownWorkflow(name) }
        return workflow
    }

    /// The names of the workflows an external event is valid for (its type is one of theirs and
    /// its value passes that type's validation), sorted.
    public func workflows(accepting event: AnyEvent) -> [String] {
        workflows.values.filter { $0.accepts(event) }.map(\.name).sorted()
    }
}
