import Foundation
import HTTPTypes
import Hummingbird
import LeaseholdEngine

/// Checks the API key on every route that is not public; answers 401 otherwise. A Bearer token
/// anywhere; HTTP Basic (the key as the password: what a browser asks its user for) only on reads,
/// so that credentials a browser keeps for the cluster page never authorize a change
/// (`CrossSiteMiddleware`).
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
        // Two challenges: API clients send a Bearer token; a browser asks its user for the key
        // (HTTP Basic: any user name, the key as the password) and, once it has it, answers the
        // same challenge from the cluster page's data requests by itself.
        response.headers.append(HTTPField(name: .wwwAuthenticate, value: "Bearer"))
        response.headers.append(HTTPField(name: .wwwAuthenticate, value: #"Basic realm="leasehold", charset="UTF-8""#))
        return response
    }

    /// A Bearer token, or HTTP Basic with the key as the password (what a browser can send: the
    /// cluster page and the data routes it fetches).
    private func authorized(_ request: Request) -> Bool {
        guard let header = request.headers[.authorization] else { return false }
        let presented: [UInt8]
        if header.hasPrefix("Bearer ") {
            presented = Array(header.dropFirst(7).utf8)
        } else if header.hasPrefix("Basic "), CrossSiteMiddleware.isSafe(request.method),
            let decoded = Data(base64Encoded: String(header.dropFirst(6))),
            let colon = decoded.firstIndex(of: UInt8(ascii: ":"))
        {
            presented = Array(decoded[decoded.index(after: colon)...])
        } else {
            return false
        }
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
