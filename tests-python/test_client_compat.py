"""The real Python client, `llama-agents-client`, drives Leasehold unchanged: every method of
`WorkflowClient`, on the in-memory store and on Postgres."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from llama_agents.client import WorkflowClient



def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=60))


async def collect(stream, limit: int = 10_000):
    events = []
    async for event in stream:
        events.append((stream.last_sequence, event))
        if len(events) >= limit:
            break
    return events


def test_health_and_workflows(server):
    async def go():
        client = WorkflowClient(base_url=server.url)
        assert (await client.is_healthy()).status == "healthy"
        names = (await client.list_workflows()).workflows
        assert set(names) >= {"echo", "counter", "approval", "fanout", "timer", "flaky"}
        schema = await client.get_workflow_schema("counter")
        assert schema.start["properties"]["count_to"]["type"] == "integer"
        events = await client.get_workflow_events_schema("approval")
        assert any(e.get("title") == "HumanResponseEvent" for e in events.events)
        graph = await client.get_workflow_graph("fanout")
        assert {n.id for n in graph.graph.nodes} >= {"split", "double", "collect", "Item", "Doubled"}
    run(go())


def test_run_workflow_waits_for_the_result(server):
    async def go():
        client = WorkflowClient(base_url=server.url)
        data = await client.run_workflow("echo", start_event={"message": "hello"})
        assert data.status == "completed"
        assert data.result.type == "StopEvent"
        assert data.result.value == {"result": "hello"}
        fanout = await client.run_workflow("fanout", start_event={"items": [1, 2, 3]})
        assert fanout.result.value["result"] == 12
    run(go())


def test_failed_run_is_reported(server):
    async def go():
        client = WorkflowClient(base_url=server.url)
        with pytest.raises(httpx.HTTPStatusError) as caught:
            await client.run_workflow("flaky", start_event={"fail_times": 99})
        assert caught.value.response.status_code == 500
        body = caught.value.response.json()
        assert body["status"] == "failed" and "failed after 5 attempts" in body["error"]
    run(go())


def test_nowait_stream_from_start_from_now_and_from_the_middle(server):
    async def go():
        client = WorkflowClient(base_url=server.url)
        started = await client.run_workflow_nowait("counter", start_event={"count_to": 20}, handler_id="count-20")
        assert started.handler_id == "count-20" and started.status == "running"
        events = await collect(client.get_workflow_events("count-20"))
        ticks = [e.value["n"] for _, e in events if e.type == "Tick"]
        assert ticks == list(range(1, 21))
        assert events[-1][1].type == "StopEvent" and events[-1][1].value == {"result": 20}
        sequences = [s for s, _ in events]
        assert sequences == sorted(set(sequences))
        # Resume from the middle: exactly the events after that sequence.
        middle = sequences[len(sequences) // 2]
        rest = await collect(client.get_workflow_events("count-20", after_sequence=middle))
        assert [s for s, _ in rest] == [s for s in sequences if s > middle]
        # Internal events make the sequence contiguous.
        everything = await collect(client.get_workflow_events("count-20", include_internal_events=True))
        assert [s for s, _ in everything] == list(range(len(everything)))
        assert any(e.type == "StepStateChanged" and e.types == ["InternalDispatchEvent"] for _, e in everything)
        # Finished and nothing after the cursor: the server answers 204 and the stream is empty.
        assert await collect(client.get_workflow_events("count-20", after_sequence=sequences[-1])) == []
        done = await client.get_handler("count-20")
        assert done.status == "completed" and done.completed_at is not None
    run(go())


def test_human_in_the_loop_with_the_clients_event_envelope(server):
    async def go():
        from workflows.events import HumanResponseEvent

        client = WorkflowClient(base_url=server.url)
        await client.run_workflow_nowait("approval", start_event={"request": "deploy"}, handler_id="hitl-1")
        first = await collect(client.get_workflow_events("hitl-1"), limit=1)
        assert first[0][1].type == "InputRequiredEvent"
        sent = await client.send_event("hitl-1", HumanResponseEvent(response="yes"))
        assert sent.status == "sent"
        # Resume after the event already seen: the tail holds the rest, whenever this stream opens
        # (a stream from "now" opened after the answer could start past the end).
        tail = await collect(client.get_workflow_events("hitl-1", after_sequence=first[0][0]))
        assert tail[0][0] > first[0][0]
        assert tail[-1][1].type == "StopEvent"
        assert tail[-1][1].value == {"result": {"request": "deploy", "response": "yes"}}
        result = await client.get_result("hitl-1")
        assert result.status == "completed"
        with pytest.raises(httpx.HTTPStatusError) as caught:
            await client.send_event("hitl-1", HumanResponseEvent(response="again"))
        assert caught.value.response.status_code == 409
    run(go())


def test_handlers_list_and_filters(server):
    async def go():
        client = WorkflowClient(base_url=server.url)
        await client.run_workflow("echo", start_event={"message": "a"}, handler_id="list-echo")
        await client.run_workflow_nowait("approval", start_event={"request": "r"}, handler_id="list-wait")
        everything = await client.get_handlers()
        ids = {h.handler_id for h in everything.handlers}
        assert {"list-echo", "list-wait"} <= ids
        running = await client.get_handlers(status=["running"])
        assert {h.handler_id for h in running.handlers} == {"list-wait"}
        echo = await client.get_handlers(workflow_name=["echo"], status=["completed", "failed"])
        assert {h.handler_id for h in echo.handlers} == {"list-echo"}
        handler = await client.get_handler("list-wait")
        assert handler.status == "running" and handler.result is None
    run(go())


def test_cancel_with_and_without_purge(server):
    async def go():
        client = WorkflowClient(base_url=server.url)
        await client.run_workflow_nowait("approval", start_event={"request": "c"}, handler_id="cancel-me")
        stream = client.get_workflow_events("cancel-me", after_sequence=-1)
        assert (await client.cancel_handler("cancel-me")).status == "cancelled"
        events = await collect(stream)
        assert events[-1][1].type == "WorkflowCancelledEvent"
        assert events[-1][1].types == ["StopEvent"]
        with pytest.raises(httpx.HTTPStatusError) as caught:
            await client.get_handler("cancel-me")
        assert caught.value.response.status_code == 500
        assert caught.value.response.json()["status"] == "cancelled"
        await client.run_workflow_nowait("approval", start_event={"request": "p"}, handler_id="purge-me")
        assert (await client.cancel_handler("purge-me", purge=True)).status == "deleted"
        with pytest.raises(httpx.HTTPStatusError) as gone:
            await client.get_handler("purge-me")
        assert gone.value.response.status_code == 404
    run(go())


def test_wait_for_handler_and_timer(server):
    async def go():
        client = WorkflowClient(base_url=server.url)
        await client.run_workflow_nowait("timer", start_event={"seconds": 0.3}, handler_id="timer-1")
        done = await client.wait_for_handler("timer-1", timeout=20, poll_interval=0.05)
        assert done.status == "completed" and done.result.value == {"result": "rang"}
    run(go())
