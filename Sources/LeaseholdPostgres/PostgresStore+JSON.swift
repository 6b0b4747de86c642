import Foundation
import LeaseholdEngine
import LeaseholdStore
import PostgresNIO

/// The JSON the store binds into its statements (snapshots, log records, events): the engine's
/// encoder, which refuses non-finite numbers.
extension PostgresStore {
    func json<T: Encodable>(_ value: T) throws -> String {
        String(decoding: try encoder.encode(value), as: UTF8.self)
    }

    /// The two the hot path writes, without `JSONEncoder` (see `LogRecord.jsonString`); like it,
    /// they refuse a value JSON cannot hold (NaN, infinity) rather than write something else.
    func json(_ record: LogRecord) throws -> String {
        guard record.value.isFinite else { throw Self.notFinite(record.type) }
        return record.jsonString
    }

    func json(_ event: AnyEvent) throws -> String {
        guard event.value.isFinite else { throw Self.notFinite(event.type) }
        return event.jsonString
    }

    private static func notFinite(_ type: String) -> EncodingError {
        EncodingError.invalidValue(
            type, EncodingError.Context(codingPath: [], debugDescription: "\(type) holds a number that is not finite"))
    }
}
