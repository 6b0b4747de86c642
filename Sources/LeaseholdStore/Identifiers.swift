import Foundation
import LeaseholdKit

/// A handler's id: URL-safe text, chosen by the client or made by the server.
public struct HandlerID: RawRepresentable, Hashable, Sendable, Codable, CustomStringConvertible,
    ExpressibleByStringLiteral
{
    /// The id's text.
    public var rawValue: String
    /// The id with this text (not validated).
    public init(rawValue: String) { self.rawValue = rawValue }
    /// The id with this text (not validated).
    public init(_ rawValue: String) { self.rawValue = rawValue }
    /// The id spelled by a literal.
    public init(stringLiteral value: String) { self.rawValue = value }
    /// The id's text.
    public var description: String { rawValue }

    /// The 64 characters of a random id, in order (also the digits of its packed form).
    package static let randomAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
    private static let alphabet = Array(randomAlphabet)

    /// A random URL-safe id (21 characters, 126 bits), drawn from `ids`.
    public static func random(from ids: IDSource = .system) -> HandlerID {
        HandlerID(String((0..<21).map { _ in alphabet[Int(ids.next() % 64)] }))
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
    /// The id's text.
    public var rawValue: String
    /// The id with this text (not validated).
    public init(rawValue: String) { self.rawValue = rawValue }
    /// The id with this text (not validated).
    public init(_ rawValue: String) { self.rawValue = rawValue }
    /// The id spelled by a literal.
    public init(stringLiteral value: String) { self.rawValue = value }
    /// The id's text.
    public var description: String { rawValue }
}

/// The fencing token of a lease: raised by every claim, so a higher token always wins.
public struct FencingToken: RawRepresentable, Hashable, Sendable, Codable, Comparable, CustomStringConvertible {
    /// The token's value, from the store's token sequence.
    public var rawValue: Int64
    /// The token with this value.
    public init(rawValue: Int64) { self.rawValue = rawValue }
    /// The token with this value.
    public init(_ rawValue: Int64) { self.rawValue = rawValue }
    /// The value in decimal.
    public var description: String { String(rawValue) }
    /// Whether `lhs` is older than `rhs` (a lower value).
    public static func < (lhs: FencingToken, rhs: FencingToken) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// A lease a replica holds on a handler. Every write for the handler carries it.
public struct Lease: Sendable, Hashable, Codable {
    /// The handler the lease is on.
    public var handlerID: HandlerID
    /// The replica that holds it.
    public var replicaID: ReplicaID
    /// Its fencing token: a write under a token that is no longer the handler's is refused.
    public var token: FencingToken

    /// The lease of `replicaID` on `handlerID` under `token`.
    public init(handlerID: HandlerID, replicaID: ReplicaID, token: FencingToken) {
        self.handlerID = handlerID
        self.replicaID = replicaID
        self.token = token
    }
}
