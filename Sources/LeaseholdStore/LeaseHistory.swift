import Foundation

/// One change of a handler's ownership, as the store recorded it in the statement that made it.
public struct LeaseChange: Sendable, Hashable, Codable {
    /// What changed.
    public enum Kind: String, Sendable, Codable, CaseIterable {
        /// Created, owned by the creating replica.
        case created
        /// Claimed while unowned and not hibernated (released earlier, e.g. handed off).
        case claimed
        /// Claimed while hibernated (an event or a due timer woke it).
        case reloaded
        /// Claimed from an owner whose lease had lapsed (failover).
        case failedOver = "failed_over"
        /// Released by its owner (hand-off on shutdown, or a lease it would not run).
        case released
        /// Hibernated: snapshot written and lease released.
        case hibernated
        /// Its lease was voided with the owner's registration (lapsed, restarted or superseded).
        case voided
        /// Finished (completed or failed): no owner any more.
        case finished
        /// Cancelled (by any replica).
        case cancelled
    }

    /// The handler whose ownership changed.
    public var handlerID: HandlerID
    /// When it changed, by the store's clock.
    public var at: Date
    /// What changed.
    public var kind: Kind
    /// The replica that owns the handler after the change (nil when nobody does), or, for
    /// `released`, `hibernated`, `voided` and `finished`, the one that owned it.
    public var replica: ReplicaID?
    /// The fencing token after the change.
    public var token: FencingToken

    /// A change of `kind` to `handlerID`'s ownership at `at`.
    public init(handlerID: HandlerID, at: Date, kind: Kind, replica: ReplicaID?, token: FencingToken) {
        self.handlerID = handlerID
        self.at = at
        self.kind = kind
        self.replica = replica
        self.token = token
    }
}
