import CoreMetrics
import Hummingbird
import LeaseholdKit
import Metrics

/// Counts requests by matched route template, method and status, and times each one until its
/// body has been written (so an SSE stream's duration is the stream's, not its headers').
struct RequestMetricsMiddleware: RouterMiddleware {
    typealias Context = BasicRequestContext

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws
        -> Response
    {
        let started = ContinuousClock.now
        var response = try await next(request, context)
        // The route the router matched, as it was registered (`/handlers/{handler_id}`): set while
        // routing, read here afterwards (matching the path against every template again per
        // request was 4 % of a replica's CPU under echo load).
        let label =
            switch context.endpointPath {
            case nil, "NotFound"?: "unmatched"
            case let path?: path
            }
        let dimensions = [
            ("route", label), ("method", request.method.rawValue), ("status", String(response.status.code)),
        ]
        Counter(label: "leasehold_http_requests_total", dimensions: dimensions).increment()
        let body = response.body
        response.body = ResponseBody(contentLength: body.contentLength) { writer in
            defer {
                let elapsed = ContinuousClock.now - started
                Metrics.Timer(label: "leasehold_http_request_duration_seconds", dimensions: [("route", label)])
                    .recordNanoseconds(elapsed.wholeNanoseconds)
            }
            try await body.write(writer)
        }
        return response
    }
}
