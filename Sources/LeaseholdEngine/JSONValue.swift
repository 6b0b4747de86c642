import Foundation

/// A JSON value: the payload of every event and of context state.
public enum JSONValue: Sendable, Hashable {
    case null
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])
}

extension JSONValue: Codable {
    /// Decodes any JSON value; a number comes out as `.int` when it decodes as an `Int`.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        /// "Is it this kind?": a failure only means try the next one (`Decoder` has no way to
        /// ask a value's kind first). Hot paths read JSON with `JSONParser`, not this.
        func attempt<T: Decodable>(_ type: T.Type) -> T? { try? container.decode(type) }
        if container.decodeNil() {
            self = .null
        } else if let value = attempt(Bool.self) {
            self = .bool(value)
        } else if let value = attempt(Int.self) {
            self = .int(value)
        } else if let value = attempt(Double.self) {
            self = .double(value)
        } else if let value = attempt(String.self) {
            self = .string(value)
        } else if let value = attempt([JSONValue].self) {
            self = .array(value)
        } else {
            self = .object(try container.decode([String: JSONValue].self))
        }
    }

    /// Encodes the value as the JSON it stands for.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case .bool(let value): try container.encode(value)
        case .int(let value): try container.encode(value)
        case .double(let value): try container.encode(value)
        case .string(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        }
    }
}

extension JSONValue {
    /// An object's field; nil when there is no such field or this is not an object.
    public subscript(key: String) -> JSONValue? {
        if case .object(let fields) = self { return fields[key] }
        return nil
    }

    /// An integer, or a double with an integral value below 10^15; nil for anything else.
    public var intValue: Int? {
        switch self {
        case .int(let value): return value
        case .double(let value) where value.rounded() == value && abs(value) < 1e15: return Int(value)
        default: return nil
        }
    }

    /// A number (integer or double) as a `Double`; nil for anything else.
    public var doubleValue: Double? {
        switch self {
        case .int(let value): return Double(value)
        case .double(let value): return value
        default: return nil
        }
    }

    /// The text of a JSON string; nil for anything else.
    public var stringValue: String? {
        if case .string(let value) = self { return value }
        return nil
    }

    /// The value of a JSON `true` or `false`; nil for anything else.
    public var boolValue: Bool? {
        if case .bool(let value) = self { return value }
        return nil
    }

    /// The elements of a JSON array; nil for anything else.
    public var arrayValue: [JSONValue]? {
        if case .array(let value) = self { return value }
        return nil
    }

    /// The fields of a JSON object; nil for anything else.
    public var objectValue: [String: JSONValue]? {
        if case .object(let value) = self { return value }
        return nil
    }

    /// Parses JSON text (see `JSONParser` for how numbers come out).
    /// - Throws: `EngineError.invalidJSON` naming what was wrong and where.
    public static func parse(_ data: Data) throws -> JSONValue {
        try parse(bytes: Array(data))
    }

    /// Parses JSON text.
    /// - Throws: `EngineError.invalidJSON` naming what was wrong and where.
    public static func parse(_ text: String) throws -> JSONValue {
        try parse(bytes: Array(text.utf8))
    }

    static func parse(bytes: [UInt8], maximumDepth: Int = JSONParser.requestDepth) throws -> JSONValue {
        do {
            return try JSONParser.parse(bytes, maximumDepth: maximumDepth)
        } catch {
            throw EngineError.invalidJSON(error.description)
        }
    }

    /// Whether every number in it is finite: JSON has no NaN or infinity, and what is logged must
    /// be written as it is (the HTTP writer shows them as null; the store refuses them).
    public var isFinite: Bool {
        switch self {
        case .double(let value): value.isFinite
        case .array(let values): values.allSatisfy(\.isFinite)
        case .object(let fields): fields.values.allSatisfy(\.isFinite)
        default: true
        }
    }

    /// Compact JSON text. Object keys are sorted so equal values always serialise the same.
    public var jsonString: String {
        var out = ""
        out.reserveCapacity(64)
        write(to: &out)
        return out
    }

    /// Appends the compact JSON text of the value to `out` (NaN and infinity as null).
    public func write(to out: inout String) {
        switch self {
        case .null: out += "null"
        case .bool(let value): out += value ? "true" : "false"
        case .int(let value): out += String(value)
        case .double(let value):
            if value.isFinite {
                if value.rounded() == value && abs(value) < 1e15 {
                    out += String(Int(value))
                    out += ".0"
                } else {
                    out += "\(value)"
                }
            } else {
                out += "null"
            }
        case .string(let value): JSONValue.writeString(value, to: &out)
        case .array(let values):
            out += "["
            var first = true
            for value in values {
                if !first { out += "," }
                first = false
                value.write(to: &out)
            }
            out += "]"
        case .object(let fields):
            out += "{"
            var first = true
            for key in fields.keys.sorted() {
                if !first { out += "," }
                first = false
                JSONValue.writeString(key, to: &out)
                out += ":"
                fields[key]!.write(to: &out)
            }
            out += "}"
        }
    }

    /// Appends `value` to `out` as a JSON string literal, quoted and escaped.
    public static func writeString(_ value: String, to out: inout String) {
        out += "\""
        // Most strings need no escape: appended whole (per scalar it was 3 % of a replica's CPU).
        if !value.utf8.contains(where: { $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") || $0 < 0x20 }) {
            out += value
            out += "\""
            return
        }
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case let s where s.value < 0x20:
                let hex = String(s.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
    }
}

extension JSONValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral,
    ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral, ExpressibleByNilLiteral, ExpressibleByFloatLiteral
{
    /// A JSON string.
    public init(stringLiteral value: String) { self = .string(value) }
    /// A JSON integer.
    public init(integerLiteral value: Int) { self = .int(value) }
    /// A JSON `true` or `false`.
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    /// A JSON number with a fraction.
    public init(floatLiteral value: Double) { self = .double(value) }
    /// A JSON array.
    public init(arrayLiteral elements: JSONValue...) { self = .array(elements) }
    /// JSON `null`.
    public init(nilLiteral: ()) { self = .null }
    /// A JSON object; of repeated keys the last wins.
    public init(dictionaryLiteral elements: (String, JSONValue)...) {
        self = .object(Dictionary(elements, uniquingKeysWith: { _, last in last }))
    }
}

extension LogRecord {
    /// Its JSON text, with the keys of its `Codable` form, written directly (the checkpoint writes
    /// every logged event; `JSONEncoder` made that 4.5 % of a replica's CPU under echo load).
    public var jsonString: String {
        var out = "{\"sequence\":"
        out += String(sequence)
        out += ",\"type\":"
        JSONValue.writeString(type, to: &out)
        out += ",\"value\":"
        value.write(to: &out)
        if let types {
            out += ",\"types\":"
            JSONValue.array(types.map(JSONValue.string)).write(to: &out)
        }
        out += ",\"qualifiedName\":"
        JSONValue.writeString(qualifiedName, to: &out)
        out += isInternal ? ",\"isInternal\":true" : ",\"isInternal\":false"
        out += isTerminal ? ",\"isTerminal\":true}" : ",\"isTerminal\":false}"
        return out
    }

    /// Reads the JSON text of a record (`jsonString`, or its `Codable` form).
    /// - Throws: `EngineError.invalidJSON` naming what was wrong.
    public init(jsonText: String) throws {
        let fields = try JSONValue.parseObject(jsonText, of: "log record")
        guard let sequence = fields["sequence"]?.intValue, case .string(let type)? = fields["type"],
            let value = fields["value"], case .string(let qualifiedName)? = fields["qualifiedName"],
            case .bool(let isInternal)? = fields["isInternal"], case .bool(let isTerminal)? = fields["isTerminal"]
        else { throw EngineError.invalidJSON("a log record lacks a field or has one of the wrong type") }
        var types: [String]?
        switch fields["types"] {
        case nil, .null?: types = nil
        case .array(let names)?:
            types = try names.map { name in
                guard case .string(let text) = name else { throw EngineError.invalidJSON("a log record's types") }
                return text
            }
        default: throw EngineError.invalidJSON("a log record's types")
        }
        self.init(
            sequence: Int64(sequence), type: type, value: value, types: types, qualifiedName: qualifiedName,
            isInternal: isInternal, isTerminal: isTerminal)
    }
}

extension AnyEvent {
    /// Its JSON text, with the keys of its `Codable` form, written directly.
    public var jsonString: String {
        var out = "{\"type\":"
        JSONValue.writeString(type, to: &out)
        out += ",\"value\":"
        value.write(to: &out)
        out += "}"
        return out
    }

    /// Reads the JSON text of an event (`jsonString`, or its `Codable` form).
    /// - Throws: `EngineError.invalidJSON` naming what was wrong.
    public init(jsonText: String) throws {
        let fields = try JSONValue.parseObject(jsonText, of: "event")
        guard case .string(let type)? = fields["type"], let value = fields["value"] else {
            throw EngineError.invalidJSON("an event lacks its type or value")
        }
        self.init(type: type, value: value)
    }
}

extension JSONValue {
    /// A record or event the store wrote (`storedDepth`: room for the levels around a value).
    static func parseObject(_ text: String, of what: String) throws -> [String: JSONValue] {
        guard case .object(let fields) = try parse(bytes: Array(text.utf8), maximumDepth: JSONParser.storedDepth)
        else { throw EngineError.invalidJSON("\(what) is not an object") }
        return fields
    }
}

extension JSONValue: CustomStringConvertible {
    /// The value as compact JSON text (`jsonString`).
    public var description: String { jsonString }
}
