import Foundation
import Hummingbird
import LeaseholdEngine
import LeaseholdStore

/// The JSON shapes of the LlamaIndex workflows server (docs/wire.md).
enum WireFormat {
    static func json(_ value: JSONValue, status: HTTPResponse.Status = .ok) -> Response {
        var text = value.jsonString
        text += "\n"
        return Response(
            status: status, headers: [.contentType: "application/json"],
            body: ResponseBody(byteBuffer: ByteBuffer(string: text)))
    }

    /// The read-side event envelope; every key present, `null` where empty.
    static func envelope(_ record: LogRecord, qualifiedName: Bool = true) -> JSONValue {
        [
            "value": record.value,
            "type": .string(record.type),
            "types": record.types.map { .array($0.map(JSONValue.string)) } ?? .null,
            "qualified_name": qualifiedName ? .string(record.qualifiedName) : .null,
        ]
    }

    static func handler(_ record: HandlerRecord, bareResult: Bool = false) -> JSONValue {
        var result: JSONValue = .null
        if let terminal = record.result {
            result = bareResult ? (terminal.value["result"] ?? .null) : envelope(terminal)
        }
        return [
            "handler_id": .string(record.id.rawValue),
            "workflow_name": .string(record.workflowName),
            "run_id": .string(record.runID),
            "status": .string(record.status.rawValue),
            "error": record.error.map(JSONValue.string) ?? .null,
            "result": result,
            "result_unreadable": false,
            "started_at": .string(timestamp(record.startedAt)),
            "updated_at": .string(timestamp(record.updatedAt)),
            "completed_at": record.completedAt.map { .string(timestamp($0)) } ?? .null,
        ]
    }

    /// ISO-8601 with microseconds and an explicit offset, as Python's `datetime.isoformat()`.
    static func timestamp(_ date: Date) -> String {
        var seconds = time_t(floor(date.timeIntervalSince1970))
        let micros = Int((date.timeIntervalSince1970 - Double(seconds)) * 1_000_000)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        let micro = String(min(micros, 999_999))
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2))."
            + String(repeating: "0", count: 6 - micro.count) + micro + "+00:00"
    }

    /// Reads a write-side event envelope: `{"type", "value"}`, the same as a JSON string, or the
    /// legacy `{"type", "data"}`; a value whose only key is `_data` stands for the fields inside it.
    /// - Throws: `APIError` 400 saying what is missing.
    static func event(from raw: JSONValue) throws -> AnyEvent {
        var raw = raw
        if case .string(let text) = raw {
            do {
                raw = try JSONValue.parse(text)
            } catch {
                throw APIError(.badRequest, "event is a string but not JSON: \(error)")
            }
            // The body's own check saw an escape ("\\u0000") where this text now has the character.
            if containsNUL(raw) { throw APIError(.badRequest, "strings in the event must not contain \\u0000") }
        }
        guard case .object(let object) = raw else { throw APIError(.badRequest, "event must be a JSON object") }
        guard let type = object["type"]?.stringValue, !type.isEmpty else {
            throw APIError(.badRequest, "event must have a string 'type'")
        }
        var value = object["value"] ?? object["data"] ?? [:]
        if value == .null { value = [:] }
        if case .object(let fields) = value, fields.count == 1, let inner = fields["_data"] {
            value = inner
        }
        guard case .object = value else { throw APIError(.badRequest, "event value must be a JSON object") }
        return AnyEvent(type: type, value: value)
    }

    /// Parses a request body as a JSON object (an empty body is `{}`).
    static func object(_ buffer: ByteBuffer) throws -> [String: JSONValue] {
        if buffer.readableBytes == 0 { return [:] }
        let value: JSONValue
        do {
            value = try JSONValue.parse(Data(buffer.readableBytesView))
        } catch {
            throw APIError(.badRequest, "request body is not valid JSON: \(error)")
        }
        guard case .object(let object) = value else {
            throw APIError(.badRequest, "request body must be a JSON object")
        }
        if containsNUL(value) { throw APIError(.badRequest, "strings in the request body must not contain \\u0000") }
        return object
    }

    /// PostgreSQL text and jsonb cannot hold U+0000; refuse it at the door rather than fail later.
    static func containsNUL(_ value: JSONValue) -> Bool {
        switch value {
        case .string(let text): return text.contains("\u{0}")
        case .array(let items): return items.contains(where: containsNUL)
        case .object(let fields): return fields.contains { $0.key.contains("\u{0}") || containsNUL($0.value) }
        default: return false
        }
    }
}
