/// The workflows a server offers, by name.
public struct WorkflowRegistry: Sendable {
    public private(set) var workflows: [String: Workflow] = [:]

    public init(_ workflows: [Workflow] = []) throws {
        for workflow in workflows { try register(workflow) }
    }

    /// - Throws: `EngineError.duplicateWorkflow` when the name is taken.
    public mutating func register(_ workflow: Workflow) throws {
        guard workflows[workflow.name] == nil else { throw EngineError.duplicateWorkflow(workflow.name) }
        workflows[workflow.name] = workflow
    }

    public var names: [String] { workflows.keys.sorted() }

    /// - Throws: `EngineError.unknownWorkflow`.
    public func workflow(_ name: String) throws -> Workflow {
        guard let workflow = workflows[name] else { throw EngineError.unknownWorkflow(name) }
        return workflow
    }
}
