import Hummingbird
import LeaseholdEngine
import Logging

/// Turns every thrown error into the contract's JSON error (`ErrorMapping`), and answers unknown
/// paths with 404 and known paths with the wrong method with 405 (and `Allow`).
struct ErrorMiddleware: RouterMiddleware {
    typealias Context = BasicRequestContext

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws
        -> Response
    {
        do {
            return try await next(request, context)
        } catch let error as HTTPError where error.status == .notFound {
            let templates = Routes.templates(matching: request.uri.path)
            if templates.isEmpty {
                return WireFormat.json(["detail": "Not Found"], status: .notFound)
            }
            if !templates.contains(where: {
                $0.method == request.method || ($0.method == .get && request.method == .head)
            }) {
                var response = WireFormat.json(["detail": "Method Not Allowed"], status: .methodNotAllowed)
                response.headers[.allow] = templates.map(\.method.rawValue).joined(separator: ", ")
                return response
            }
            return try ErrorMapping.apiError(error).response(from: request, context: context)
        } catch {
            let apiError = ErrorMapping.apiError(error)
            if apiError.status.code >= 500 {
                context.logger.error("request failed", metadata: ["error": "\(String(reflecting: error))"])
            }
            return try apiError.response(from: request, context: context)
        }
    }
}
