import Foundation
import LeaseholdEngine
import Testing

/// The hand-written JSON reader and writers against Foundation's `JSONDecoder`/`JSONEncoder`,
/// which they replace on the hot path: the same values from the same text, and text each side
/// reads back as the other wrote it.
@Suite("JSON parser and writers")
struct JSONParserTests {
    /// `JSONValue` as `JSONDecoder` reads it (its `Decodable` form): the reference.
    static func foundation(_ text: String) throws -> JSONValue {
        try JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))
    }

    @Test(
        "valid JSON reads as JSONDecoder read it",
        arguments: [
            "1", "1.0", "1e2", "1.5", "-0", "-0.0", "0.1e1", "2.50", "1e-7", "1E+3", "12345678901234567890",
            "9007199254740993.0", "1e15", "-9223372036854775808", "9223372036854775808", "123.456e-2",
            #""plain""#, #""esc \" \\ \/ \b \f \n \r \t""#, #""\u00e9 \u20AC \ud83d\ude00 é 😀""#, #""""#,
            "true", "false", "null", " \n\t[ 1 , 2 ]\r\n", "[]", "{}", #"{"a": {"b": [1, {"c": null}]}, "d": "e"}"#,
            #"[[[[["deep"]]]]]"#, #"{"message": "hello", "n": 3, "xs": [1.25, -2, true]}"#,
            // Whole by their Double, below 2^53: ints, as JSONDecoder had them.
            "1.0000000000000001", "1e-400", "0e20", "0e-5", "-1.5e1",
            // Exponents at the ends of Int (a trap in an earlier version of the parser).
            #"{"a": 0.55e-9223372036854775807}"#, "[1.0e-9223372036854775808]", "1e-99999999999999999999",
        ])
    func sameAsFoundation(_ text: String) throws {
        #expect(try JSONValue.parse(text) == (try Self.foundation(text)))
    }

    @Test(
        "malformed JSON is refused, saying what and where",
        arguments: [
            ("{not json", "expected a string key at byte 1"),
            ("[1,]", "unexpected character ']' at byte 3"),
            (#"{"a": 1, "a": 2}"#, "repeated key 'a' at byte 9"),
            ("01", "unexpected text after the value at byte 1"),
            ("1.", "invalid number at byte 2"),
            ("-", "invalid number at byte 1"),
            ("1e400", "number out of range at byte 5"),
            ("1e999999999999999999999", "number out of range at byte 23"),
            ("\u{FEFF}{}", "unexpected character '\u{EF}' at byte 0"),
            (#""\ud800""#, "a high surrogate without its low surrogate at byte 7"),
            (#""\udc00""#, "a low surrogate without its high surrogate at byte 7"),
            ("\"a\u{1}b\"", "unescaped control character in a string at byte 2"),
            (#""\x""#, "invalid escape '\\x' at byte 3"),
            ("tru", "unexpected end of text at byte 3"),
            ("nul1", "invalid literal at byte 3"),
            (#"{"a":1}x"#, "unexpected text after the value at byte 7"),
            (#""open"#, "unterminated string at byte 5"),
            ("", "unexpected end of text at byte 0"),
            (#"{"a" 1}"#, "expected ':' at byte 5"),
            ("[1 2]", "expected ',' or ']' at byte 3"),
        ])
    func refused(_ text: String, _ reason: String) {
        #expect(throws: EngineError.invalidJSON(reason)) { try JSONValue.parse(text) }
    }

    @Test("nesting deeper than 256 (Bounds.maximumDepth) is refused without recursing into it; 256 is read")
    func depthLimit() throws {
        let deep = String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        #expect(throws: EngineError.invalidJSON("nested deeper than 256 at byte 256")) { try JSONValue.parse(deep) }
        let limit = String(repeating: "[", count: 256) + String(repeating: "]", count: 256)
        #expect(throws: Never.self) { try JSONValue.parse(limit) }
    }

    @Test("bytes that are not UTF-8 inside a string are refused")
    func invalidUTF8() {
        let bytes: [UInt8] = [0x22, 0x61, 0xFF, 0x62, 0x22]
        #expect(throws: EngineError.invalidJSON("invalid UTF-8 in a string at byte 4")) {
            try JSONValue.parse(Data(bytes))
        }
    }

    static func randomValue(_ rng: inout SeededGenerator, depth: Int = 0) -> JSONValue {
        let strings = ["", "a", "é", "😀", "quote \" back \\ slash", "ctl \u{1} \u{1F} \n\t", "/", "\u{7F}"]
        switch Int.random(in: 0..<(depth < 3 ? 7 : 5), using: &rng) {
        case 0: return .null
        case 1: return .bool(Bool.random(using: &rng))
        case 2: return .int(Int.random(in: Int.min...Int.max, using: &rng))
        case 3:
            // Whole doubles read back as ints (as JSONDecoder reads them), so only fractions here.
            let value = Double.random(in: -1e6...1e6, using: &rng)
            return .double(value.rounded() == value ? value + 0.5 : value)
        case 4: return .string(strings.randomElement(using: &rng)!)
        case 5:
            return .array((0..<Int.random(in: 0..<4, using: &rng)).map { _ in randomValue(&rng, depth: depth + 1) })
        default:
            var fields: [String: JSONValue] = [:]
            for _ in 0..<Int.random(in: 0..<4, using: &rng) {
                fields[strings.randomElement(using: &rng)! + "k"] = randomValue(&rng, depth: depth + 1)
            }
            return .object(fields)
        }
    }

    @Test(
        "what the writers write, both readers read back the same, and the reader reads JSONEncoder's text",
        arguments: 0..<100)
    func roundTrips(_ seed: Int) throws {
        var rng = SeededGenerator(seed: UInt64(seed) &* 104_729 &+ 3)
        let value = Self.randomValue(&rng)
        #expect(try JSONValue.parse(value.jsonString) == value)
        #expect(try Self.foundation(value.jsonString) == value)

        let record = LogRecord(
            sequence: Int64(seed), type: "Tick", value: value, types: seed % 2 == 0 ? nil : ["Event", "Base"],
            qualifiedName: "samples.Tick", isInternal: seed % 3 == 0, isTerminal: seed % 5 == 0)
        #expect(try LogRecord(jsonText: record.jsonString) == record)
        #expect(try JSONDecoder().decode(LogRecord.self, from: Data(record.jsonString.utf8)) == record)
        let encoded = String(decoding: try JSONEncoder().encode(record), as: UTF8.self)
        #expect(try LogRecord(jsonText: encoded) == record)

        let event = AnyEvent(type: "HumanResponseEvent", value: value)
        #expect(try AnyEvent(jsonText: event.jsonString) == event)
        #expect(try JSONDecoder().decode(AnyEvent.self, from: Data(event.jsonString.utf8)) == event)
        #expect(try AnyEvent(jsonText: String(decoding: try JSONEncoder().encode(event), as: UTF8.self)) == event)
    }

    @Test("a log record without a required field, or with one of the wrong type, is refused")
    func recordFieldsChecked() {
        #expect(throws: EngineError.self) { try LogRecord(jsonText: #"{"sequence": 1, "type": "X"}"#) }
        #expect(throws: EngineError.self) {
            try LogRecord(
                jsonText:
                    #"{"sequence": "1", "type": "X", "value": 1, "qualifiedName": "q", "isInternal": false, "isTerminal": false}"#
            )
        }
        #expect(throws: EngineError.self) { try AnyEvent(jsonText: #"{"value": 1}"#) }
        #expect(throws: EngineError.self) { try AnyEvent(jsonText: "[1]") }
    }
}
