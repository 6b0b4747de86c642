import LeaseholdStore

/// What the coordinator refuses.
public enum CoordinatorError: Error, Sendable, Hashable, CustomStringConvertible {
    case shuttingDown
    case handlerRunning(HandlerID)
    case invalidHandlerID(String)
    case replicaIDTaken(ReplicaID)
    /// A run's handler was not written and never will be (its creation was prevented): it will
    /// not run. Retrying is safe.
    case runNotStarted(HandlerID)
    /// Whether a run's handler was written is unknown: the database did not answer. Not to be
    /// retried blindly; the handler's record will tell.
    case runOutcomeUnknown(HandlerID)
    /// A run whose handler was never written but whose steps had begun (a server-chosen id runs
    /// before its first checkpoint creates it): it will not go on, and what its steps did may
    /// have happened. Not "retry": a retry runs them again.
    case runNotKept(HandlerID)

    /// A message for people; the API sends it as the error's `detail`.
    public var description: String {
        switch self {
        case .shuttingDown: return "this replica is shutting down"
        case .handlerRunning(let id): return "handler \(id) already exists and is running"
        case .invalidHandlerID(let id): return "handler_id '\(id)' must be 1-128 URL-safe characters"
        case .replicaIDTaken(let id):
            return "replica id \(id) was registered by another process; this one stopped its handlers. "
                + "Give every replica its own --replica-id"
        case .runNotStarted(let id):
            return "the run was not started (handler \(id) could not be written) and will not run; retry"
        case .runOutcomeUnknown(let id):
            return "the database did not answer: whether the run started is unknown; GET /handlers/\(id) will tell"
        case .runNotKept(let id):
            return "the run began but handler \(id) could not be written: it will not go on, and its steps may "
                + "have had effects; not retried automatically"
        }
    }
}
