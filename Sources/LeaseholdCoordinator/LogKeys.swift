/// Log metadata keys, one spelling everywhere.
public enum LogKeys {
    public static let replicaID = "replica_id"
    public static let handlerID = "handler_id"
    public static let fencingToken = "fencing_token"
    public static let workflow = "workflow"
    public static let reason = "reason"
    public static let error = "error"
    public static let count = "count"
    public static let status = "status"
    public static let address = "address"
    public static let elapsed = "elapsed"
    public static let requestID = "request_id"
    public static let database = "database"
    public static let detail = "detail"
}
