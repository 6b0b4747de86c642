import CoreMetrics
import Foundation
import HTTPTypes
import Hummingbird
import LeaseholdEngine
import Logging
import Metrics

/// Turns every thrown error into the contract's JSON error; answers unknown routes with 404 and
/// known paths with the wrong method with 405; checks the API key; records request metrics.
struct APIMiddleware: RouterMiddleware {
    typealias Context = BasicRequestContext
    let apiKeys: [[UInt8]]

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws
        -> Response
    {
        let started = ContinuousClock.now
        let templates = Routes.templates(matching: request.uri.path)
        let route = templates.first { $0.method == request.method } ?? templates.first
        var response: Response
        if !apiKeys.isEmpty, !(route?.public_ ?? false), !authorized(request) {
            response = WireFormat.json(["detail": "missing or invalid API key"], status: .unauthorized)
            response.headers[.wwwAuthenticate] = "Bearer"
        } else {
            do {
                response = try await next(request, context)
            } catch let error as HTTPError where error.status == .notFound && templates.isEmpty == false
                && !templates.contains(where: { $0.method == request.method || ($0.method == .get && request.method == .head) })
            {
                response = WireFormat.json(["detail": "Method Not Allowed"], status: .methodNotAllowed)
                response.headers[.allow] = templates.map(\.method.rawValue).joined(separator: ", ")
            } catch let error as HTTPError where error.status == .notFound && templates.isEmpty {
                response = WireFormat.json(["detail": "Not Found"], status: .notFound)
            } catch {
                let apiError = ErrorMapping.apiError(error)
                if apiError.status.code >= 500 {
                    context.logger.error("request failed", metadata: ["error": "\(String(reflecting: error))"])
                }
                response = try apiError.response(from: request, context: context)
            }
        }
        let label = route?.path ?? "unmatched"
        let dimensions = [("route", label), ("method", request.method.rawValue), ("status", String(response.status.code))]
        Counter(label: "leasehold_http_requests_total", dimensions: dimensions).increment()
        let elapsed = ContinuousClock.now - started
        Metrics.Timer(label: "leasehold_http_request_duration_seconds", dimensions: [("route", label)])
            .recordNanoseconds(elapsed.components.seconds * 1_000_000_000 + elapsed.components.attoseconds / 1_000_000_000)
        return response
    }

    private func authorized(_ request: Request) -> Bool {
        guard let header = request.headers[.authorization], header.hasPrefix("Bearer ") else { return false }
        let presented = Array(header.dropFirst(7).utf8)
        var matched = false
        for key in apiKeys where Self.constantTimeEqual(presented, key) { matched = true }
        return matched
    }

    /// Compares without an early exit, so the time taken does not reveal how much of a key matched.
    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        var difference = UInt8(a.count == b.count ? 0 : 1)
        for index in 0..<max(a.count, b.count) {
            let x = index < a.count ? a[index] : 0
            let y = index < b.count ? b[index] : 0
            difference |= x ^ y
        }
        return difference == 0
    }
}
