/// Everything a store can refuse or fail with.
public enum StoreError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The write carried a lease that is no longer current: another replica holds the handler,
    /// or the lease expired. Nothing was written; the caller must stop the handler.
    case leaseLost(HandlerID)
    case handlerNotFound(HandlerID)
    case handlerExists(HandlerID)
    case handlerFinished(HandlerID)
    /// A log append did not continue the sequence (a stale writer raced a newer one).
    case sequenceConflict(HandlerID, Int64)
    /// The database cannot be reached or failed; the operation may be retried.
    case unavailable(String)
    case corrupt(String)
    /// Another process registered under this replica id after this one: this process holds no
    /// lease any more and must stop its handlers (and exit; replica ids must be unique).
    case registrationSuperseded(ReplicaID)
    /// An append that would also claim the handler found its row held longer than it may wait
    /// (another transaction on it); nothing was written. The caller appends without claiming.
    case handlerBusy(HandlerID)
    /// A creation under a reserved token that the store's token sequence is not past (the
    /// database went back in time since the reservation, or is another one): nothing was
    /// written, and the replica's reserved tokens are not to be used.
    case tokenAhead(FencingToken)

    /// A fenced write the store refused for what it holds (the lease gone, the log not continuing
    /// the row's): nothing was written.
    public var isRefusedWrite: Bool {
        switch self {
        case .leaseLost, .sequenceConflict: return true
        default: return false
        }
    }

    /// A message for people saying what went wrong.
    public var description: String {
        switch self {
        case .leaseLost(let id): return "lease on handler \(id) lost"
        case .handlerNotFound(let id): return "handler \(id) not found"
        case .handlerExists(let id): return "handler \(id) already exists"
        case .handlerFinished(let id): return "handler \(id) is already finished"
        case .sequenceConflict(let id, let sequence): return "handler \(id): sequence \(sequence) already written"
        case .unavailable(let reason): return "store unavailable: \(reason)"
        case .corrupt(let reason): return "store data corrupt: \(reason)"
        case .registrationSuperseded(let id):
            return "replica id \(id) was registered by another process: this one holds no lease any more"
        case .handlerBusy(let id): return "handler \(id) is locked by another transaction"
        case .tokenAhead(let token): return "reserved token \(token) is ahead of the store's token sequence"
        }
    }
}
