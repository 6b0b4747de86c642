import Foundation

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// The two external systems a review talks to: a classifier that fails now and then, and the
/// records system, which keeps a decision only if its fencing token is not lower than the
/// highest it has seen for that document.
struct Services: Sendable {
    /// Where the classifier answers `POST /classify` (env `CLASSIFIER_URL`).
    var classifier: URL
    /// Where the records system answers `PUT /records/{document}` (env `RECORDS_URL`).
    var records: URL

    init(environment: [String: String]) {
        classifier = URL(string: environment["CLASSIFIER_URL"] ?? "http://127.0.0.1:8901")!
        records = URL(string: environment["RECORDS_URL"] ?? "http://127.0.0.1:8901")!
    }

    struct Unavailable: Error, CustomStringConvertible {
        var what: String
        var description: String
    }

    /// The classifier's label for `text`; throws when the classifier fails (the step retries).
    func classify(document: String, text: String) async throws -> String {
        var request = URLRequest(url: classifier.appendingPathComponent("classify"), timeoutInterval: 5)
        request.httpMethod = "POST"
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        request.httpBody = try JSONSerialization.data(withJSONObject: ["document": document, "text": text])
        let (data, response) = try await send(request)
        guard response.statusCode == 200,
            let body = try JSONSerialization.jsonObject(with: data) as? [String: Any],
            let label = body["label"] as? String
        else {
            throw Unavailable(what: "classifier", description: "classifier answered \(response.statusCode)")
        }
        return label
    }

    /// Records the decision with the step's fencing token. Returns false when the records system
    /// refused it: a newer owner of the handler wrote with a higher token.
    func record(document: String, decision: [String: Any], token: Int64) async throws -> Bool {
        var request = URLRequest(url: records.appendingPathComponent("records/\(document)"), timeoutInterval: 5)
        request.httpMethod = "PUT"
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        var body = decision
        body["token"] = token
        request.httpBody = try JSONSerialization.data(withJSONObject: body)
        let (_, response) = try await send(request)
        switch response.statusCode {
        case 200: return true
        case 409: return false
        default: throw Unavailable(what: "records", description: "records system answered \(response.statusCode)")
        }
    }

    /// One request, finished even when the step is cancelled meanwhile (as a step's write may
    /// well be): fencing, not cancellation, is what keeps a late write out.
    private func send(_ request: URLRequest) async throws -> (Data, HTTPURLResponse) {
        try await withCheckedThrowingContinuation { continuation in
            URLSession.shared.dataTask(with: request) { data, response, error in
                if let error { return continuation.resume(throwing: error) }
                guard let response = response as? HTTPURLResponse else {
                    return continuation.resume(
                        throwing: Unavailable(what: "http", description: "no HTTP response"))
                }
                continuation.resume(returning: (data ?? Data(), response))
            }.resume()
        }
    }
}
