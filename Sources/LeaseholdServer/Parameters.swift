import Foundation
import HTTPTypes
import Hummingbird
import LeaseholdCoordinator
import LeaseholdEngine
import LeaseholdStore
import NIOCore

/// Path parameters, query flags and the request body, each checked with a clear error.
extension LeaseholdAPI {
    func id(_ context: BasicRequestContext) throws -> HandlerID {
        guard let text = context.parameters.get("handler_id") else { throw APIError(.badRequest, "handler id missing") }
        // Every id the server ever made or accepted is URL-safe; anything else cannot exist.
        guard HandlerID.isValid(text) else { throw APIError(.notFound, "Handler not found") }
        return HandlerID(text)
    }

    func name(_ context: BasicRequestContext) throws -> String {
        guard let text = context.parameters.get("name") else { throw APIError(.badRequest, "workflow name missing") }
        return text
    }

    func flag(_ request: Request, _ name: String, default value: Bool) throws -> Bool {
        guard let text = request.uri.queryParameters.get(name), !text.isEmpty else { return value }
        switch text.lowercased() {
        case "true", "1", "yes", "on": return true
        case "false", "0", "no", "off": return false
        default: throw APIError(.badRequest, "query parameter '\(name)' must be true or false, got '\(text)'")
        }
    }

    func body(_ request: Request) async throws -> [String: JSONValue] {
        var request = request
        let buffer: ByteBuffer
        do {
            buffer = try await request.collectBody(upTo: configuration.maxBodyBytes)
        } catch let error as HTTPError where error.status == .contentTooLarge {
            throw APIError(.contentTooLarge, "request body is larger than \(configuration.maxBodyBytes) bytes")
        } catch is NIOTooManyBytesError {
            throw APIError(.contentTooLarge, "request body is larger than \(configuration.maxBodyBytes) bytes")
        }
        return try WireFormat.object(buffer)
    }
}
