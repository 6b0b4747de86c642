/// Everything the engine can reject. Messages are written for the API caller.
public enum EngineError: Error, Sendable, Hashable, CustomStringConvertible {
    case invalidJSON(String)
    case unknownWorkflow(String)
    case unknownEventType(workflow: String, type: String)
    case invalidEvent(type: String, reason: String)
    case invalidWorkflow(workflow: String, reason: String)
    case duplicateWorkflow(String)

    /// A message for people, naming what is wrong.
    public var description: String {
        switch self {
        case .invalidJSON(let reason): return "invalid JSON: \(reason)"
        case .unknownWorkflow(let name): return "workflow '\(name)' not found"
        case .unknownEventType(let workflow, let type):
            return "event type '\(type)' is not an event of workflow '\(workflow)'"
        case .invalidEvent(let type, let reason): return "invalid \(type): \(reason)"
        case .invalidWorkflow(let workflow, let reason): return "workflow '\(workflow)' is invalid: \(reason)"
        case .duplicateWorkflow(let name): return "workflow '\(name)' is already registered"
        }
    }
}
