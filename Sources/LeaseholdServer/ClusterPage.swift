import Foundation
import Hummingbird

/// `GET /`: the live cluster page, plain HTML/CSS/JS shipped in the binary's resources.
enum ClusterPage {
    static let html: String = {
        guard let url = Bundle.module.url(forResource: "index", withExtension: "html", subdirectory: "Resources"),
            // A build without the resource serves the fallback page below.
            let text = try? String(contentsOf: url, encoding: .utf8)
        else { return "<!doctype html><title>Leasehold</title><p>cluster page missing from this build</p>" }
        return text
    }()

    static func response() -> Response {
        Response(
            status: .ok, headers: [.contentType: "text/html; charset=utf-8"],
            body: ResponseBody(byteBuffer: ByteBuffer(string: html)))
    }
}
