import HTTPTypes
import Hummingbird
import LeaseholdCoordinator
import LeaseholdEngine
import LeaseholdStore

/// A caller's mistake (or the server's own failure) as the wire sees it: a status and a
/// `{"detail": "..."}` body.
public struct APIError: Error, HTTPResponseError, Sendable {
    /// The response's HTTP status.
    public var status: HTTPResponse.Status
    /// The message, sent as the body's `detail`.
    public var detail: String
    /// Extra response headers (`Retry-After` on a retryable failure).
    public var headers: HTTPFields
    /// More fields of the body (a run's `handler_id`).
    public var fields: [String: JSONValue]

    /// An error answered with `status` and `detail`.
    public init(
        _ status: HTTPResponse.Status, _ detail: String, headers: HTTPFields = [:], fields: [String: JSONValue] = [:]
    ) {
        self.status = status
        self.detail = detail
        self.headers = headers
        self.fields = fields
    }

    /// The JSON response: `fields` plus `detail`, with `status` and `headers`.
    public func response(from request: Request, context: some RequestContext) throws -> Response {
        var body = fields
        body["detail"] = .string(detail)
        var response = WireFormat.json(.object(body), status: status)
        for field in headers { response.headers.append(field) }
        return response
    }
}

/// The one place that maps module errors to HTTP statuses.
enum ErrorMapping {
    static func apiError(_ error: any Error) -> APIError {
        switch error {
        case let error as APIError:
            return error
        case let error as EngineError:
            switch error {
            case .unknownWorkflow: return APIError(.notFound, error.description)
            case .invalidJSON, .unknownEventType, .invalidEvent: return APIError(.badRequest, error.description)
            case .invalidWorkflow, .duplicateWorkflow: return APIError(.internalServerError, error.description)
            }
        case let error as StoreError:
            switch error {
            case .handlerNotFound: return APIError(.notFound, "Handler not found")
            case .handlerExists: return APIError(.conflict, error.description)
            case .handlerFinished: return APIError(.conflict, "Workflow already completed")
            case .unavailable, .handlerBusy, .tokenAhead:
                return APIError(.serviceUnavailable, "database unavailable, retry", headers: [.retryAfter: "1"])
            case .leaseLost, .sequenceConflict, .corrupt: return APIError(.internalServerError, error.description)
            case .registrationSuperseded:
                return APIError(.serviceUnavailable, "this replica is shutting down", headers: [.retryAfter: "1"])
            }
        case let error as CoordinatorError:
            switch error {
            case .shuttingDown, .replicaIDTaken:
                return APIError(.serviceUnavailable, error.description, headers: [.retryAfter: "1"])
            case .handlerRunning: return APIError(.conflict, error.description)
            case .invalidHandlerID: return APIError(.badRequest, error.description)
            case .runNotStarted(let id):
                return APIError(
                    .serviceUnavailable, error.description, headers: [.retryAfter: "1"],
                    fields: ["handler_id": .string(id.rawValue)])
            case .runOutcomeUnknown(let id):
                return APIError(.gatewayTimeout, error.description, fields: ["handler_id": .string(id.rawValue)])
            case .runNotKept(let id):
                return APIError(.internalServerError, error.description, fields: ["handler_id": .string(id.rawValue)])
            }
        case let error as HTTPError:
            return APIError(error.status, error.body ?? error.status.reasonPhrase)
        default:
            return APIError(.internalServerError, "internal error")
        }
    }
}
