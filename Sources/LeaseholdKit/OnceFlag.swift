import Synchronization

/// A flag that is set once and read from any thread (a stop asked for, a migration done).
public final class OnceFlag: Sendable {
    private let value = Mutex(false)

    /// A flag not set yet.
    public init() {}

    /// Sets the flag (again: no effect).
    public func set() { value.withLock { $0 = true } }

    /// Whether the flag was set.
    public var isSet: Bool { value.withLock { $0 } }
}
