import Foundation
import HTTPTypes
import Hummingbird

/// Refuses what a page on another web site can make a browser send to a state-changing route
/// (cross-site request forgery), API key or not: once an operator opened the cluster page, the
/// browser holds its Basic credentials and would attach them to any site's form or fetch.
///
/// A state-changing request (any method but GET, HEAD, OPTIONS) that a browser sent — it carries
/// `Origin` or a `Sec-Fetch-*` header, as every current browser's POST does — is refused when
/// - `Sec-Fetch-Site` says another site sent it (`cross-site`, `same-site`): 403;
/// - `Origin` names another origin than the one it was sent to (or is `null`): 403;
/// - it carries a body type a form can send (`Content-Type` other than JSON): 415. A JSON body
///   from another origin needs a CORS preflight, which this server never grants.
/// API clients (the Python client, curl, whose `-d` sends a form's type) send none of these
/// headers and pass. The cluster page changes nothing. With API keys, `AuthMiddleware` takes the
/// Basic credentials a browser keeps for reads only.
struct CrossSiteMiddleware: RouterMiddleware {
    typealias Context = BasicRequestContext

    static let secFetchSite = HTTPField.Name("Sec-Fetch-Site")!
    static let secFetchMode = HTTPField.Name("Sec-Fetch-Mode")!

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws
        -> Response
    {
        guard !Self.isSafe(request.method), Self.sentByBrowser(request.headers) else {
            return try await next(request, context)
        }
        if let site = request.headers[Self.secFetchSite], !["same-origin", "none"].contains(site.lowercased()) {
            throw APIError(.forbidden, "cross-site request refused (Sec-Fetch-Site: \(site))")
        }
        if let origin = request.headers[.origin], !Self.sameOrigin(origin, host: request.head.authority) {
            throw APIError(.forbidden, "cross-origin request refused (Origin: \(origin))")
        }
        if let type = request.headers[.contentType], !Self.isJSON(type) {
            throw APIError(
                .unsupportedMediaType, "request body must be JSON (Content-Type: application/json), not '\(type)'")
        }
        return try await next(request, context)
    }

    static func sentByBrowser(_ headers: HTTPFields) -> Bool {
        headers[.origin] != nil || headers[secFetchSite] != nil || headers[secFetchMode] != nil
    }

    /// Methods that change nothing (the page and every read).
    static func isSafe(_ method: HTTPRequest.Method) -> Bool {
        method == .get || method == .head || method == .options
    }

    /// `application/json`, or a `+json` type, with any parameters.
    static func isJSON(_ contentType: String) -> Bool {
        let type = contentType.split(separator: ";").first.map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
        guard let type else { return false }
        return type == "application/json" || (type.hasPrefix("application/") && type.hasSuffix("+json"))
    }

    /// Whether `origin` (scheme://host[:port]) is the origin of the server the request reached at `host`.
    static func sameOrigin(_ origin: String, host: String?) -> Bool {
        guard let host, let url = URLComponents(string: origin), let originHost = url.host,
            let scheme = url.scheme, ["http", "https"].contains(scheme)
        else { return false }
        let port = url.port ?? (scheme == "https" ? 443 : 80)
        let target = host.lowercased()
        let named = "\(originHost.lowercased()):\(port)"
        return target == named || (target == originHost.lowercased() && port == (scheme == "https" ? 443 : 80))
    }
}
