import Foundation
import LeaseholdEngine
import Logging

/// One JSON object per line on standard error: time, level, message, label and metadata.
struct JSONLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let (level, message, explicit) = (event.level, event.message, event.metadata)
        var fields: [String: JSONValue] = [
            "time": .string(ISO8601DateFormatter().string(from: Date())),
            "level": .string(level.rawValue),
            "message": .string(message.description),
            "label": .string(label),
        ]
        for (key, value) in metadata.merging(explicit ?? [:], uniquingKeysWith: { $1 }) {
            fields[key] = .string("\(value)")
        }
        FileHandle.standardError.write(Data((JSONValue.object(fields).jsonString + "\n").utf8))
    }
}
