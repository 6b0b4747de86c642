import Foundation

/// A handler's id: URL-safe text, chosen by the client or made by the server.
public struct HandlerID: RawRepresentable, Hashable, Sendable, Codable, CustomStringConvertible,
    ExpressibleByStringLiteral
{
    public var rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
    public init(_ rawValue: String) { self.rawValue = rawValue }
    public init(stringLiteral value: String) { self.rawValue = value }
    public var description: String { rawValue }

    /// The 64 characters of a random id, in order (also the digits of its packed form).
    package static let randomAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
    private static let alphabet = Array(randomAlphabet)

    /// A random URL-safe id (21 characters, 126 bits).
    public static func random() -> HandlerID {
        var generator = SystemRandomNumberGenerator()
        return HandlerID(String((0..<21).map { _ in alphabet[Int(generator.next() % 64)] }))
    }

    /// Whether the text can be a handler id (1–128 URL-safe characters).
    public static func isValid(_ text: String) -> Bool {
        !text.isEmpty && text.count <= 128 && text.allSatisfy { alphabet.contains($0) || $0 == "." || $0 == "~" }
    }
}

/// A replica's id, unique in the cluster.
public struct ReplicaID: RawRepresentable, Hashable, Sendable, Codable, CustomStringConvertible,
    ExpressibleByStringLiteral
{
    public var rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
    public init(_ rawValue: String) { self.rawValue = rawValue }
    public init(stringLiteral value: String) { self.rawValue = value }
    public var description: String { rawValue }
}

/// The fencing token of a lease: raised by every claim, so a higher token always wins.
public struct FencingToken: RawRepresentable, Hashable, Sendable, Codable, Comparable, CustomStringConvertible {
    public var rawValue: Int64
    public init(rawValue: Int64) { self.rawValue = rawValue }
    public init(_ rawValue: Int64) { self.rawValue = rawValue }
    public var description: String { String(rawValue) }
    public static func < (lhs: FencingToken, rhs: FencingToken) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// A lease a replica holds on a handler. Every write for the handler carries it.
public struct Lease: Sendable, Hashable, Codable {
    public var handlerID: HandlerID
    public var replicaID: ReplicaID
    public var token: FencingToken

    public init(handlerID: HandlerID, replicaID: ReplicaID, token: FencingToken) {
        self.handlerID = handlerID
        self.replicaID = replicaID
        self.token = token
    }
}
