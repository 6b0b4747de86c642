import Hummingbird
import LeaseholdEngine

/// Checks the API key (a Bearer token) on every route that is not public; answers 401 otherwise.
struct AuthMiddleware: RouterMiddleware {
    typealias Context = BasicRequestContext
    let apiKeys: [[UInt8]]

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws
        -> Response
    {
        guard !apiKeys.isEmpty, !Routes.isPublic(request.uri.path, method: request.method), !authorized(request) else {
            return try await next(request, context)
        }
        var response = WireFormat.json(["detail": "missing or invalid API key"], status: .unauthorized)
        response.headers[.wwwAuthenticate] = "Bearer"
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
