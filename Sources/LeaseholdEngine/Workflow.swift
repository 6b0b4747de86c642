/// A workflow definition: its event types and steps. Validated when created.
public struct Workflow: Sendable {
    /// The workflow's name, unique in a registry; clients run it by this name.
    public let name: String
    /// The start event's type: `StartEvent` with the declared start fields.
    public let startEvent: EventType
    /// The type of the event that completes a run (`StopEvent` or a subtype).
    public let stopEvent: EventType
    /// Types a client may send into a running handler.
    public let externalEvents: [EventType]
    /// Every event type of this workflow by name (start, stop, routed, streamed, external, built-ins).
    public let eventTypes: [String: EventType]
    /// The steps, in the order events are dispatched to them.
    public let steps: [Step]
    /// Seconds after which the whole run fails; nil = no limit.
    public let timeout: Double?

    /// - Throws: `EngineError.invalidWorkflow` naming the step or event at fault: a step that
    ///   cannot be reached from the start event, an emitted event that no step accepts, an
    ///   accepted event nothing produces, or an event type that is used but not declared.
    public init(
        name: String,
        start: [FieldSpec],
        stop: EventType = .stop,
        events: [EventType] = [],
        external: [EventType] = [],
        steps: [Step],
        timeout: Double? = nil
    ) throws {
        self.name = name
        self.startEvent = EventType(EventType.startEventName, fields: start, module: "leasehold.\(name)")
        self.stopEvent = stop
        self.externalEvents = external
        self.steps = steps
        self.timeout = timeout
        var types: [String: EventType] = [:]
        for type in [startEvent, stop, .stop, .failed, .cancelled, .stepStateChanged, .stepFailed] + events + external {
            types[type.name] = type
        }
        types[FanIn.collectedEventName] = EventType(
            FanIn.collectedEventName, fields: [FieldSpec("events", .array(.any))])
        self.eventTypes = types
        try validate()
    }

    private func validate() throws {
        func fail(_ reason: String) -> EngineError { .invalidWorkflow(workflow: name, reason: reason) }
        if steps.isEmpty { throw fail("it has no steps") }
        var names = Set<String>()
        for step in steps {
            if !names.insert(step.name).inserted { throw fail("step '\(step.name)' is defined twice") }
            for type in step.accepts + step.emits + step.streams + step.waitsFor where eventTypes[type] == nil {
                throw fail("step '\(step.name)' uses event type '\(type)', which is not declared")
            }
            if let fanIn = step.fanIn, eventTypes[fanIn.eventType] == nil {
                throw fail("step '\(step.name)' collects '\(fanIn.eventType)', which is not declared")
            }
        }
        try validateCatchers()
        // Reachability from the start event (external events and timers count as produced; a
        // step's failure produces `StepFailedEvent`).
        var produced: Set<String> = [EventType.startEventName, EventType.stepFailed.name]
        produced.formUnion(externalEvents.map(\.name))
        var reached = Set<String>()
        var changed = true
        while changed {
            changed = false
            for step in steps where !reached.contains(step.name) {
                let triggers = step.accepts + (step.fanIn.map { [$0.eventType] } ?? [])
                if triggers.contains(where: produced.contains) {
                    reached.insert(step.name)
                    produced.formUnion(step.emits)
                    changed = true
                }
            }
        }
        if let lost = steps.first(where: { !reached.contains($0.name) }) {
            throw fail("step '\(lost.name)' cannot be reached from StartEvent")
        }
        let accepted = Set(steps.flatMap { $0.accepts + ($0.fanIn.map { [$0.eventType] } ?? []) })
        for step in steps {
            for type in step.emits where !accepted.contains(type) && !isStop(type) {
                throw fail("event '\(type)' emitted by step '\(step.name)' is accepted by no step")
            }
        }
        if !accepted.contains(EventType.startEventName) { throw fail("no step accepts StartEvent") }
        for type in externalEvents where !accepted.contains(type.name) && !waitsFor(type.name) {
            throw fail("external event '\(type.name)' is accepted by no step")
        }
    }

    /// Python's rules: at most one wildcard handler; a scoped handler names existing steps that
    /// are not handlers; no step is claimed by two scoped handlers.
    private func validateCatchers() throws {
        func fail(_ reason: String) -> EngineError { .invalidWorkflow(workflow: name, reason: reason) }
        let catchers = steps.filter { $0.catches != nil }
        if catchers.filter({ $0.catches?.steps == nil }).count > 1 {
            throw fail("more than one catch_error step handles every step")
        }
        var claimed: [String: String] = [:]
        for catcher in catchers {
            for target in catcher.catches?.steps ?? [] {
                guard let step = step(named: target) else {
                    throw fail("catch_error step '\(catcher.name)' handles '\(target)', which is not a step")
                }
                if step.catches != nil {
                    throw fail("catch_error step '\(catcher.name)' handles '\(target)', which is a catch_error step")
                }
                if let other = claimed.updateValue(catcher.name, forKey: target) {
                    throw fail("step '\(target)' is handled by both '\(other)' and '\(catcher.name)'")
                }
            }
        }
    }

    /// The `catch_error` step that handles `step`'s failures, if any: a scoped one naming it,
    /// else the wildcard (never for a handler itself).
    public func catcher(of step: String) -> Step? {
        guard self.step(named: step)?.catches == nil else { return nil }
        return steps.first { $0.catches?.steps?.contains(step) == true }
            ?? steps.first { $0.catches != nil && $0.catches?.steps == nil }
    }

    private func waitsFor(_ type: String) -> Bool {
        steps.contains { $0.waitsFor.contains(type) }
    }

    /// Whether `type` ends the run (StopEvent or one of its subtypes).
    public func isStop(_ type: String) -> Bool {
        type == EventType.stopEventName || type == stopEvent.name
            || (eventTypes[type]?.isA(EventType.stopEventName) ?? false)
    }

    /// The step called `name`; nil when there is none.
    public func step(named name: String) -> Step? { steps.first { $0.name == name } }

    /// The envelope metadata of an event type: parents (nil when none) and qualified name.
    public func describe(_ type: String) -> (types: [String]?, qualifiedName: String) {
        if let known = eventTypes[type] {
            return (known.parents.isEmpty ? nil : known.parents, known.qualifiedName)
        }
        return (nil, "leasehold.\(name).\(type)")
    }

    /// Validates an event a client sends into a handler of this workflow.
    /// - Throws: `EngineError.unknownEventType` or `.invalidEvent`.
    public func validateExternal(_ event: AnyEvent) throws {
        guard let type = externalEvents.first(where: { $0.name == event.type }) else {
            throw EngineError.unknownEventType(workflow: name, type: event.type)
        }
        try type.validate(event.value)
    }

    /// Whether `validateExternal` passes for `event`.
    public func accepts(_ event: AnyEvent) -> Bool {
        guard let type = externalEvents.first(where: { $0.name == event.type }) else { return false }
        do {
            try type.validate(event.value)
            return true
        } catch {
            return false  // the reason is reported by `validateExternal`, for the handler's own workflow
        }
    }

    /// Validates a start event's value.
    public func validateStart(_ value: JSONValue) throws {
        try startEvent.validate(value)
    }
}
