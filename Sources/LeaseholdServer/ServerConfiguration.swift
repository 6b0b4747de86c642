/// How the HTTP side of a replica behaves.
public struct ServerConfiguration: Sendable {
    /// The address the HTTP server binds to.
    public var host: String
    /// The TCP port it listens on.
    public var port: Int
    /// Largest accepted request body; larger → 413.
    public var maxBodyBytes: Int
    /// Bearer keys; empty = no authentication.
    public var apiKeys: [String]
    /// Concurrent event streams per replica; beyond it → 503 with Retry-After.
    public var maxStreams: Int
    /// A stream whose client has not taken a write for this long (it stopped reading; the socket
    /// buffers are full) is ended, so it cannot hold a stream slot forever.
    public var streamStallTimeout: Duration
    /// Seconds between SSE heartbeat comments while nothing happens.
    public var heartbeatSeconds: Double
    /// Polling fallback for stream tails, in case a notification is lost.
    public var pollSeconds: Double
    /// Prometheus text for `/metrics` (the executable owns the registry).
    public var metricsText: @Sendable () -> String
    /// Whether the schema is migrated (for `/ready`); the in-memory store always is.
    public var migrated: @Sendable () -> Bool

    /// A configuration; the defaults serve on 127.0.0.1:8080 without authentication.
    public init(
        host: String = "127.0.0.1",
        port: Int = 8080,
        maxBodyBytes: Int = 1 << 20,
        apiKeys: [String] = [],
        maxStreams: Int = 1000,
        streamStallTimeout: Duration = .seconds(30),
        heartbeatSeconds: Double = 5,
        pollSeconds: Double = 1,
        metricsText: @escaping @Sendable () -> String = { "" },
        migrated: @escaping @Sendable () -> Bool = { true }
    ) {
        self.host = host
        self.port = port
        self.maxBodyBytes = maxBodyBytes
        self.apiKeys = apiKeys
        self.maxStreams = maxStreams
        self.streamStallTimeout = streamStallTimeout
        self.heartbeatSeconds = heartbeatSeconds
        self.pollSeconds = pollSeconds
        self.metricsText = metricsText
        self.migrated = migrated
    }
}
