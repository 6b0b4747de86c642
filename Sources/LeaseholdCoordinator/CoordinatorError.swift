import LeaseholdStore

/// What the coordinator refuses.
public enum CoordinatorError: Error, Sendable, Hashable, CustomStringConvertible {
    case shuttingDown
    case handlerRunning(HandlerID)
    case invalidHandlerID(String)
    case replicaIDTaken(ReplicaID)

    public var description: String {
        switch self {
        case .shuttingDown: return "this replica is shutting down"
        case .handlerRunning(let id): return "handler \(id) already exists and is running"
        case .invalidHandlerID(let id): return "handler_id '\(id)' must be 1-128 URL-safe characters"
        case .replicaIDTaken(let id):
            return "replica id \(id) was registered by another process; this one stopped its handlers. "
                + "Give every replica its own --replica-id"
        }
    }
}
