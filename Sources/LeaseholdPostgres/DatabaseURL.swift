import Foundation
import LeaseholdKit
import PostgresNIO

/// A parsed `postgres://user:password@host:port/database` URL. Its description never shows the password.
public struct DatabaseURL: Sendable, CustomStringConvertible {
    /// The server's host name or address.
    public var host: String
    /// The server's port; 5432 when the URL names none.
    public var port: Int
    /// The role to connect as; `postgres` when the URL names none.
    public var username: String
    /// The password (percent-decoded); nil when the URL has none.
    public var password: String?
    /// The database name; the user name when the URL has no path.
    public var database: String
    /// Whether connections must use TLS (`?sslmode=require` or `verify-full`).
    public var requireTLS: Bool
    /// Sent as a session start-up parameter on every connection: `on` (the default),
    /// `remote_write` or `remote_apply` (`?synchronous_commit=` in the URL). Never `off` or
    /// `local`, whatever postgresql.conf, the role or the database say: with those a crash of the
    /// primary, or a failover, loses acknowledged commits on the same timeline, where no check of
    /// the node can see it, and fencing rests on every acknowledged write staying written.
    public var synchronousCommit: String

    /// - Throws: `DatabaseURLError` saying what is wrong (without the password).
    public init(_ text: String) throws {
        guard let components = URLComponents(string: text), let scheme = components.scheme,
            ["postgres", "postgresql"].contains(scheme)
        else {
            throw DatabaseURLError(message: "database URL must look like postgres://user:password@host:port/database")
        }
        guard let host = components.host, !host.isEmpty else {
            throw DatabaseURLError(message: "database URL has no host")
        }
        self.host = host
        self.port = components.port ?? 5432
        self.username = components.user.flatMap { $0.removingPercentEncoding } ?? "postgres"
        self.password = components.password.flatMap { $0.removingPercentEncoding }
        let path = components.path.hasPrefix("/") ? String(components.path.dropFirst()) : components.path
        self.database = path.isEmpty ? username : path
        let sslmode = components.queryItems?.first { $0.name == "sslmode" }?.value
        self.requireTLS = sslmode == "require" || sslmode == "verify-full"
        let commit = components.queryItems?.first { $0.name == "synchronous_commit" }?.value ?? "on"
        guard ["on", "remote_write", "remote_apply"].contains(commit) else {
            throw DatabaseURLError(
                message: "database URL: synchronous_commit=\(commit) would let the database lose acknowledged "
                    + "commits; use on, remote_write or remote_apply")
        }
        self.synchronousCommit = commit
    }

    /// The URL without its password.
    public var description: String { "postgres://\(username)@\(host):\(port)/\(database)" }

    /// The pool's configuration. With `sessionTimeout` (a replica passes its lease TTL), the
    /// server ends a session of this replica that sits idle inside a transaction, or whose sent
    /// data stays unacknowledged, for that long: a replica cut off mid-transaction cannot hold row
    /// locks (and so block the hand-over of its handlers) for longer than a lease lasts.
    public func clientConfiguration(
        applicationName: String = "leasehold", sessionTimeout: Duration? = nil
    ) -> PostgresClient.Configuration {
        var configuration = PostgresClient.Configuration(
            host: host, port: port, username: username, password: password, database: database,
            tls: requireTLS ? .require(.makeClientConfiguration()) : .disable)
        configuration.options.connectTimeout = .seconds(3)
        configuration.options.maximumConnections = 16
        // No pool keep-alive: postgres-nio writes its query unchecked, and one written just as
        // the server closes the session is lost and never returns, so the pool's `run()` (and a
        // replica's shutdown) never ends. A dead session is found by the store's own request
        // watchdog and LISTEN probe; a closed one the pool sees by itself.
        configuration.options.keepAliveBehavior = nil
        var parameters = [
            ("application_name", String(applicationName.prefix(63))), ("synchronous_commit", synchronousCommit),
        ]
        if let sessionTimeout {
            let milliseconds = max(1, sessionTimeout.wholeMilliseconds)
            parameters.append(("idle_in_transaction_session_timeout", "\(milliseconds)"))
            parameters.append(("tcp_user_timeout", "\(milliseconds)"))
        }
        configuration.options.additionalStartupParameters = parameters
        return configuration
    }
}

/// A database URL that cannot be used.
public struct DatabaseURLError: Error, CustomStringConvertible, Sendable {
    /// What is wrong (never containing the password).
    public var message: String
    /// The message.
    public var description: String { message }
}
