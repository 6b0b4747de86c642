"""The Python llama-agents-server with faithful equivalents of Leasehold's sample workflows
(echo, counter, approval), on its Postgres store, for side-by-side benchmarks (bench/run)."""

from __future__ import annotations

import asyncio
import sys

from llama_agents.server import WorkflowServer
from llama_agents.server._store.postgres_workflow_store import PostgresWorkflowStore
from workflows import Context, Workflow, step
from workflows.events import Event, HumanResponseEvent, InputRequiredEvent, StartEvent, StopEvent


class EchoWorkflow(Workflow):
    @step
    async def echo(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result=ev.get("message"))


class Tick(Event):
    n: int


class CounterWorkflow(Workflow):
    @step
    async def count(self, ctx: Context, ev: StartEvent | Tick) -> StopEvent | Tick:
        if isinstance(ev, StartEvent):
            n, target = 0, int(ev.get("count_to"))
            await ctx.store.set("count_to", target)
        else:
            n, target = ev.n, await ctx.store.get("count_to")
        if n >= target:
            return StopEvent(result=target)
        ctx.write_event_to_stream(Tick(n=n + 1))
        return Tick(n=n + 1)


class ApprovalWorkflow(Workflow):
    @step
    async def ask(self, ctx: Context, ev: StartEvent) -> StopEvent:
        request = ev.get("request")
        answer = await ctx.wait_for_event(
            HumanResponseEvent, waiter_event=InputRequiredEvent(prefix=f"Approve {request}? "), waiter_id="approval")
        return StopEvent(result={"request": request, "response": answer.response})


async def main(port: int, dsn: str | None, idle: float):
    store = PostgresWorkflowStore(dsn=dsn) if dsn else None
    if store:
        await store.run_migrations()
    server = WorkflowServer(workflow_store=store, idle_timeout=idle) if store else WorkflowServer(idle_timeout=idle)
    server.add_workflow("echo", EchoWorkflow(timeout=None))
    server.add_workflow("counter", CounterWorkflow(timeout=None))
    server.add_workflow("approval", ApprovalWorkflow(timeout=None), additional_events=[HumanResponseEvent])
    await server.serve(host="127.0.0.1", port=port, uvicorn_config={"log_level": "warning"})


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] else None,
                     float(sys.argv[3]) if len(sys.argv) > 3 else 60.0))
