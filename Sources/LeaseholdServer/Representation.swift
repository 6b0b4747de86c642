import LeaseholdEngine

/// The workflow graph of `/workflows/{name}/representation` (the Python `WorkflowGraph` model).
enum Representation {
    static func graph(_ workflow: Workflow) -> JSONValue {
        var nodes: [JSONValue] = []
        var edges: [JSONValue] = []
        var eventNames: [String] = []
        func useEvent(_ name: String) {
            if !eventNames.contains(name) { eventNames.append(name) }
        }
        for step in workflow.steps {
            nodes.append([
                "id": .string(step.name), "label": .string(step.name), "node_type": "step", "description": .null,
            ])
            for type in step.accepts + (step.fanIn.map { [$0.eventType] } ?? []) + step.waitsFor {
                useEvent(type)
                edges.append(["source": .string(type), "target": .string(step.name), "label": .null])
            }
            for type in step.emits + step.streams {
                useEvent(type)
                edges.append(["source": .string(step.name), "target": .string(type), "label": .null])
            }
        }
        for name in eventNames {
            let type = workflow.eventTypes[name] ?? EventType(name)
            let producers = workflow.steps.filter { $0.emits.contains(name) || $0.streams.contains(name) }.map(\.name)
            nodes.append([
                "id": .string(name), "label": .string(name), "node_type": "event", "event_type": .string(name),
                "event_types": .array(([name] + type.parents).map(JSONValue.string)), "event_schema": type.schema,
                "produced_by": .array(producers.map(JSONValue.string)),
            ])
        }
        return ["name": .string(workflow.name), "nodes": .array(nodes), "edges": .array(edges), "description": .null]
    }
}
