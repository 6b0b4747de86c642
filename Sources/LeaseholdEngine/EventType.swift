import Foundation

/// The JSON kind of one event field; drives both validation and the JSON Schema the API publishes.
public indirect enum FieldKind: Sendable, Hashable {
    case string
    case integer(minimum: Int? = nil)
    /// A number, optionally within bounds (inclusive); NaN and infinity are never JSON numbers.
    case number(minimum: Double? = nil, maximum: Double? = nil)
    case boolean
    case array(FieldKind)
    case object
    case any

    /// An integer with no minimum.
    public static var integer: FieldKind { .integer(minimum: nil) }
    /// A number with no bounds.
    public static var number: FieldKind { .number(minimum: nil, maximum: nil) }

    var schema: JSONValue {
        switch self {
        case .string: return ["type": "string"]
        case .integer(let minimum):
            if let minimum { return ["type": "integer", "minimum": .int(minimum)] }
            return ["type": "integer"]
        case .number(let minimum, let maximum):
            var schema: [String: JSONValue] = ["type": "number"]
            if let minimum { schema["minimum"] = .double(minimum) }
            if let maximum { schema["maximum"] = .double(maximum) }
            return .object(schema)
        case .boolean: return ["type": "boolean"]
        case .array(let element): return ["type": "array", "items": element.schema]
        case .object: return ["type": "object"]
        case .any: return [:]
        }
    }

    func check(_ value: JSONValue, path: String) -> String? {
        switch (self, value) {
        case (.any, _): return nil
        case (.string, .string): return nil
        case (.integer(let minimum), _):
            guard let number = value.intValue, value.doubleValue != nil else { return "\(path) must be an integer" }
            if let minimum, number < minimum { return "\(path) must be ≥ \(minimum)" }
            return nil
        case (.number(let minimum, let maximum), .int), (.number(let minimum, let maximum), .double):
            guard let number = value.doubleValue else { return "\(path) must be a number" }
            if let minimum, number < minimum { return "\(path) must be ≥ \(JSONValue.double(minimum).jsonString)" }
            if let maximum, number > maximum { return "\(path) must be ≤ \(JSONValue.double(maximum).jsonString)" }
            return nil
        case (.boolean, .bool): return nil
        case (.object, .object): return nil
        case (.array(let element), .array(let items)):
            for (index, item) in items.enumerated() {
                if let problem = element.check(item, path: "\(path)[\(index)]") { return problem }
            }
            return nil
        default:
            return "\(path) must be \(self.name)"
        }
    }

    var name: String {
        switch self {
        case .string: return "a string"
        case .integer: return "an integer"
        case .number: return "a number"
        case .boolean: return "a boolean"
        case .array: return "an array"
        case .object: return "an object"
        case .any: return "any value"
        }
    }
}

/// One field of an event type.
public struct FieldSpec: Sendable, Hashable {
    /// The field's key in the event's JSON object.
    public var name: String
    /// The JSON kind its value must have.
    public var kind: FieldKind
    /// Whether the field must be present and not null.
    public var required: Bool

    /// A field named `name` of kind `kind`, required unless said otherwise.
    public init(_ name: String, _ kind: FieldKind, required: Bool = true) {
        self.name = name
        self.kind = kind
        self.required = required
    }
}

/// The description of one event type: its name, parents (nearest first) and fields.
///
/// Two types with the same name in one workflow are the same type.
public struct EventType: Sendable, Hashable {
    /// The type's name, as events carry it in `type`.
    public var name: String
    /// The names of the types it derives from, nearest first.
    public var parents: [String]
    /// The fields its value has.
    public var fields: [FieldSpec]
    /// The module part of its qualified name (Python's module path).
    public var module: String
    /// Whether a value may have fields beyond `fields`.
    public var allowsExtraFields: Bool

    /// Describes an event type.
    public init(
        _ name: String,
        parents: [String] = [],
        fields: [FieldSpec] = [],
        module: String = "leasehold.samples",
        allowsExtraFields: Bool = true
    ) {
        self.name = name
        self.parents = parents
        self.fields = fields
        self.module = module
        self.allowsExtraFields = allowsExtraFields
    }

    /// The name qualified by the module: `<module>.<name>`.
    public var qualifiedName: String { "\(module).\(name)" }

    /// Whether this type is `other` or derives from it.
    public func isA(_ other: String) -> Bool { name == other || parents.contains(other) }

    /// The JSON Schema of the event's value.
    public var schema: JSONValue {
        var properties: [String: JSONValue] = [:]
        for field in fields { properties[field.name] = field.kind.schema }
        let required = fields.filter(\.required).map { JSONValue.string($0.name) }
        return [
            "title": .string(name),
            "type": "object",
            "properties": .object(properties),
            "required": .array(required),
            "additionalProperties": .bool(allowsExtraFields),
        ]
    }

    /// Checks a value against the fields.
    /// - Throws: `EngineError.invalidEvent` naming the first field that does not fit.
    public func validate(_ value: JSONValue) throws {
        guard case .object(let object) = value else {
            throw EngineError.invalidEvent(type: name, reason: "the value must be a JSON object")
        }
        for field in fields {
            guard let fieldValue = object[field.name], fieldValue != .null || !field.required else {
                if field.required {
                    throw EngineError.invalidEvent(type: name, reason: "field '\(field.name)' is required")
                }
                continue
            }
            if fieldValue == .null { continue }
            if let problem = field.kind.check(fieldValue, path: "field '\(field.name)'") {
                throw EngineError.invalidEvent(type: name, reason: problem)
            }
        }
        if !allowsExtraFields {
            let known = Set(fields.map(\.name))
            if let extra = object.keys.sorted().first(where: { !known.contains($0) }) {
                throw EngineError.invalidEvent(type: name, reason: "unknown field '\(extra)'")
            }
        }
    }
}

extension EventType {
    /// The type name of the event that starts a handler.
    public static let startEventName = "StartEvent"
    /// The type name of the event that ends a handler with a result.
    public static let stopEventName = "StopEvent"

    /// The event that completes a handler; its `result` is the handler's result.
    public static let stop = EventType(
        "StopEvent", fields: [FieldSpec("result", .any, required: false)], module: "workflows.events")
    /// The terminal event of a failed handler, with its `error`.
    public static let failed = EventType(
        "WorkflowFailedEvent", parents: ["StopEvent"], fields: [FieldSpec("error", .string)], module: "workflows.events"
    )
    /// The terminal event of a cancelled handler.
    public static let cancelled = EventType(
        "WorkflowCancelledEvent", parents: ["StopEvent"], module: "workflows.events")
    /// Logged when a step run starts or ends (internal: not a workflow event).
    public static let stepStateChanged = EventType(
        "StepStateChanged", parents: ["InternalDispatchEvent"],
        fields: [FieldSpec("name", .string), FieldSpec("step_state", .string)], module: "workflows.events")
    /// The built-in event a step writes to ask a human for input.
    public static let inputRequired = EventType("InputRequiredEvent", module: "workflows.events")
    /// The built-in external event that carries a human's answer.
    public static let humanResponse = EventType("HumanResponseEvent", module: "workflows.events")
}

/// An event as data: a type name plus its JSON value.
public struct AnyEvent: Sendable, Hashable, Codable {
    /// The event's type name.
    public var type: String
    /// The event's fields (a JSON object).
    public var value: JSONValue

    /// An event of `type` with `value`.
    public init(type: String, value: JSONValue = [:]) {
        self.type = type
        self.value = value
    }

    /// Encodes a typed event.
    public init<E: Event>(_ event: E) throws {
        self.type = E.eventType.name
        self.value = try JSONValue.encoding(event)
    }

    /// Decodes the value as a typed event.
    public func decode<E: Event>(_ type: E.Type) throws -> E {
        try value.decoding(E.self)
    }
}

/// A typed event a workflow author declares.
public protocol Event: Codable, Sendable {
    static var eventType: EventType { get }
}

extension JSONValue {
    /// Encodes `value` as a JSON value (through `JSONEncoder`).
    public static func encoding<T: Encodable>(_ value: T) throws -> JSONValue {
        let data = try JSONEncoder().encode(value)
        return try JSONDecoder().decode(JSONValue.self, from: data)
    }

    /// Decodes this JSON value as a `T` (through `JSONDecoder`).
    public func decoding<T: Decodable>(_ type: T.Type) throws -> T {
        let data = try JSONEncoder().encode(self)
        return try JSONDecoder().decode(T.self, from: data)
    }
}
