/// Log metadata keys, one spelling everywhere.
public enum LogKeys {
    /// The replica a message is about.
    public static let replicaID = "replica_id"
    /// The handler a message is about.
    public static let handlerID = "handler_id"
    /// A lease's fencing token.
    public static let fencingToken = "fencing_token"
    /// A handler's workflow name.
    public static let workflow = "workflow"
    /// Why something happened (a handler stopped, a lease was released, …).
    public static let reason = "reason"
    /// The error that made an operation fail.
    public static let error = "error"
    /// How many things a message covers (handlers, events, attempts).
    public static let count = "count"
    /// A handler's status.
    public static let status = "status"
    /// A replica's address.
    public static let address = "address"
    /// A time that has passed (by the database, by the replica).
    public static let elapsed = "elapsed"
    /// An HTTP request's id.
    public static let requestID = "request_id"
    /// Which database node answered, or how it changed.
    public static let database = "database"
    /// Further detail, such as the handlers a check found missing.
    public static let detail = "detail"
}
