import Foundation
import LeaseholdEngine

/// A document review: a classifier labels the document (retried while it fails), a person
/// decides, and the decision is recorded in another system under the step's fencing token.
///
/// Start event: `{"document": str, "text": str, "hold_ms": int?}`. `hold_ms` makes the recording
/// step wait that long before it writes, ignoring cancellation as a slow step would (the
/// fencing test pauses the owner during it). Result: `{"document", "label", "approved",
/// "reviewer", "recorded": bool}`.
enum DocumentReview {
    static let classified = EventType(
        "Classified", fields: [FieldSpec("label", .string)])
    static let decided = EventType(
        "Decided",
        fields: [FieldSpec("label", .string), FieldSpec("approved", .boolean), FieldSpec("reviewer", .string)])
    /// Streamed when the review waits for a person: what they are asked.
    static let reviewRequested = EventType(
        "ReviewRequested", fields: [FieldSpec("document", .string), FieldSpec("label", .string)])
    /// Sent by a client: the person's decision.
    static let decision = EventType(
        "Decision", fields: [FieldSpec("approved", .boolean), FieldSpec("reviewer", .string)])

    static func workflow(services: Services) throws -> Workflow {
        try Workflow(
            name: "review",
            start: [
                FieldSpec("document", .string), FieldSpec("text", .string),
                FieldSpec("hold_ms", .integer(minimum: 0), required: false),
            ],
            events: [classified, decided, reviewRequested],
            external: [decision],
            steps: [
                Step(
                    "classify", accepts: ["StartEvent"], emits: ["Classified"],
                    retry: RetryPolicy(maxAttempts: 8, initialDelay: 0.05, multiplier: 2, maxDelay: 1)
                ) { event, context in
                    let document = event.value["document"]?.stringValue ?? ""
                    let label = try await services.classify(
                        document: document, text: event.value["text"]?.stringValue ?? "")
                    context.set("document", .string(document))
                    context.set("hold_ms", event.value["hold_ms"] ?? .int(0))
                    context.send(AnyEvent(type: "Classified", value: ["label": .string(label)]))
                },
                Step(
                    "ask", accepts: ["Classified"], emits: ["Decided"], streams: ["ReviewRequested"],
                    waitsFor: ["Decision"]
                ) { event, context in
                    let label = event.value["label"] ?? .null
                    let prompt = AnyEvent(
                        type: "ReviewRequested", value: ["document": context.get("document") ?? .null, "label": label])
                    let answer = try context.waitForEvent("Decision", prompt: prompt)
                    context.send(
                        AnyEvent(
                            type: "Decided",
                            value: [
                                "label": label, "approved": answer.value["approved"] ?? false,
                                "reviewer": answer.value["reviewer"] ?? "",
                            ]))
                },
                Step(
                    "record", accepts: ["Decided"], emits: ["StopEvent"],
                    retry: RetryPolicy(maxAttempts: 5, initialDelay: 0.1, multiplier: 2, maxDelay: 1)
                ) { event, context in
                    let document = context.get("document")?.stringValue ?? ""
                    if let hold = context.get("hold_ms")?.intValue, hold > 0 {
                        // Deliberately deaf to cancellation: a slow step may be.
                        try? await Task.sleep(for: .milliseconds(hold))
                    }
                    let approved = event.value["approved"]?.boolValue ?? false
                    let reviewer = event.value["reviewer"]?.stringValue ?? ""
                    let recorded = try await services.record(
                        document: document,
                        decision: ["approved": approved, "reviewer": reviewer, "handler": context.handlerID],
                        token: context.fencingToken)
                    context.stop([
                        "document": .string(document), "label": event.value["label"] ?? .null,
                        "approved": .bool(approved), "reviewer": .string(reviewer), "recorded": .bool(recorded),
                    ])
                },
            ])
    }
}
