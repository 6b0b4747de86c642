"""Operating a replica: metrics after a workload, JSON logs without secrets, `leasehold status`,
API keys with the real client, stream limits, bad flags."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import threading
import time

import httpx
import pytest
from llama_agents.client import WorkflowClient

from conftest import BIN, free_port, psql, wait_until
from leasehold_kit.replicas import environment


def test_metrics_are_scraped_and_parsed_after_a_workload(database_url, spawn):
    replica = spawn(database_url=database_url, extra=["--idle-timeout", "200ms"])
    httpx.post(f"{replica.url}/workflows/counter/run", json={"start_event": {"count_to": 20}}, timeout=30)
    httpx.post(f"{replica.url}/workflows/approval/run-nowait", json={"start_event": {"request": "m"}, "handler_id": "m1"})
    wait_until(lambda: httpx.get(f"{replica.url}/cluster/handlers/m1").json()["hibernated"], what="hibernation")
    httpx.post(f"{replica.url}/events/m1", json={"event": {"type": "HumanResponseEvent", "value": {"response": "y"}}})
    wait_until(lambda: httpx.get(f"{replica.url}/handlers/m1").json()["status"] == "completed", what="completion")
    assert httpx.get(f"{replica.url}/no/such/route").status_code == 404

    def scrape() -> dict[str, float]:
        samples = {}
        for line in httpx.get(f"{replica.url}/metrics").text.splitlines():
            if line and not line.startswith("#"):
                name_labels, value = line.rsplit(" ", 1)
                samples[name_labels] = float(value)
        return samples

    def total(name):
        return sum(v for k, v in samples.items() if re.match(rf"{name}(\{{|$)", k))
    # Counters are incremented just after the commit a client sees: scrape until they caught up
    # (they only grow, so once true this stays true).
    def caught_up() -> dict[str, float] | None:
        latest = scrape()
        finished = sum(v for k, v in latest.items() if k.startswith("leasehold_handlers_finished_total"))
        return latest if finished >= 2 else None
    samples = wait_until(caught_up, what="finished counter caught up")
    assert total("leasehold_handlers_started_total") >= 2
    assert total("leasehold_handlers_finished_total") >= 2
    assert total("leasehold_hibernations_total") >= 1
    # The answered hibernated handler came back either through the receiving replica's reload or,
    # when its claim sweep got there first, through a claim (found in the flake hunt, 1 of 5 rounds).
    assert total("leasehold_reloads_total") + total("leasehold_failovers_total") >= 1
    assert total("leasehold_events_appended_total") >= 20
    assert total("leasehold_checkpoints_total") >= 1
    assert any(k.startswith("leasehold_http_requests_total{") and 'status="200"' in k for k in samples)
    # Labelled by the route template the router matched, not the path (whose ids are unbounded).
    requests = {k for k in samples if k.startswith("leasehold_http_requests_total{")}
    assert any('route="/workflows/{name}/run-nowait"' in k and 'method="POST"' in k for k in requests), requests
    assert any('route="/handlers/{handler_id}"' in k and 'method="GET"' in k for k in requests), requests
    assert any('route="unmatched"' in k and 'status="404"' in k for k in requests), requests
    assert not any("m1" in k or "no/such" in k for k in requests), requests
    assert any(k.startswith("leasehold_renew_duration_seconds") for k in samples)


def test_json_logs_carry_lease_changes_and_never_the_password(database_url, spawn):
    with_password = database_url.replace("postgres@", "postgres:hunter2secret@")
    replica = spawn(database_url=with_password, extra=["--log-format", "json", "--idle-timeout", "200ms"])
    httpx.post(f"{replica.url}/workflows/approval/run-nowait", json={"start_event": {"request": "l"}, "handler_id": "l1"})
    # The log line follows the commit the cluster route shows: wait for the line itself.
    def logged(message: str) -> bool:
        for line in replica.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{") and line.endswith("}") and json.loads(line).get("message") == message:
                return True
        return False
    wait_until(lambda: logged("hibernated"), what="hibernation logged")
    replica.terminate()
    lines = [json.loads(line) for line in replica.log_path.read_text().splitlines() if line.startswith("{")]
    messages = {line["message"] for line in lines}
    assert {"claimed", "hibernated", "replica registered"} <= messages
    claimed = next(line for line in lines if line["message"] == "claimed")
    assert claimed["handler_id"] == "l1" and claimed["replica_id"] == "r1" and int(claimed["fencing_token"]) >= 1
    assert "hunter2secret" not in replica.log_path.read_text()


def test_status_prints_the_cluster(database_url, spawn):
    replica = spawn(database_url=database_url)
    httpx.post(f"{replica.url}/workflows/echo/run", json={"start_event": {"message": "s"}})
    table = subprocess.run([BIN, "status", "--database-url", database_url], capture_output=True, text=True, timeout=30)
    assert table.returncode == 0, table.stderr
    assert "r1" in table.stdout and "completed 1" in table.stdout
    as_json = json.loads(subprocess.run([BIN, "status", "--database-url", database_url, "--json"],
                                        capture_output=True, text=True, timeout=30).stdout)
    assert as_json["replicas"][0]["id"] == "r1" and as_json["replicas"][0]["alive"] is True
    assert as_json["handlers"]["completed"] == 1


def test_api_key_with_the_real_client(spawn):
    replica = spawn(extra=["--api-key", "k3y"])
    assert httpx.get(f"{replica.url}/workflows").status_code == 401
    assert httpx.get(f"{replica.url}/health").status_code == 200

    async def go():
        async with httpx.AsyncClient(base_url=replica.url, headers={"Authorization": "Bearer k3y"}) as http:
            client = WorkflowClient(httpx_client=http)
            data = await client.run_workflow("echo", start_event={"message": "authorised"})
            assert data.result.value == {"result": "authorised"}
        async with httpx.AsyncClient(base_url=replica.url, headers={"Authorization": "Bearer nope"}) as http:
            with pytest.raises(httpx.HTTPStatusError) as caught:
                await WorkflowClient(httpx_client=http).list_workflows()
            assert caught.value.response.status_code == 401
            assert caught.value.response.json() == {"detail": "missing or invalid API key"}
    asyncio.run(go())


def test_stream_cap_answers_503_with_retry_after(spawn):
    replica = spawn(extra=["--max-streams", "1"])
    httpx.post(f"{replica.url}/workflows/approval/run-nowait", json={"start_event": {"request": "s"}, "handler_id": "cap"})
    opened = threading.Event()
    done = threading.Event()

    def hold():
        with httpx.stream("GET", f"{replica.url}/events/cap", params={"after_sequence": "-1"}, timeout=30) as r:
            for _ in r.iter_lines():
                opened.set()
                if done.is_set():
                    return
    t = threading.Thread(target=hold, daemon=True)
    t.start()
    assert opened.wait(10)
    second = httpx.get(f"{replica.url}/events/cap", params={"after_sequence": "-1"}, timeout=10)
    assert second.status_code == 503 and second.headers["retry-after"] == "1"
    assert "too many open streams" in second.json()["detail"]
    done.set()
    httpx.post(f"{replica.url}/handlers/cap/cancel")
    t.join(10)


def test_an_sse_stream_opens_before_anything_happens(spawn):
    """An SSE stream of a handler with nothing new answers at once: its head and an `: open`
    comment come before any event or heartbeat (a browser's EventSource opens on the head)."""
    replica = spawn()
    httpx.post(f"{replica.url}/workflows/approval/run-nowait", json={"start_event": {"request": "o"}, "handler_id": "open"})
    with httpx.stream("GET", f"{replica.url}/events/open", params={"after_sequence": "now"}, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        first = next(r.iter_lines())
    assert first == ": open", f"first line was {first!r}, not the opening comment"
    assert httpx.get(f"{replica.url}/handlers/open").json()["status"] == "running"
    httpx.post(f"{replica.url}/handlers/open/cancel")


def test_a_client_that_stops_reading_loses_its_stream_slot(spawn):
    """D10: a client that opens a stream and never reads fills the socket buffers; the server ends
    that stream once a write has been pending for --stream-stall-timeout, so the client cannot hold
    the slot (or the connection) forever. The stream was cut, not finished: no terminal event."""
    replica = spawn(extra=["--max-streams", "1", "--stream-stall-timeout", "5s"])
    # A finished counter whose log (~60,000 events, ~9 MB as SSE) is more than the socket buffers hold.
    ran = httpx.post(f"{replica.url}/workflows/counter/run", json={"start_event": {"count_to": 60000}}, timeout=300)
    assert ran.status_code == 200
    handler = ran.json()["handler_id"]
    events = f"{replica.url}/events/{handler}"
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", replica.port))
    stalled.sendall(f"GET /events/{handler}?after_sequence=-1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    try:
        # The non-reading client holds the only slot: another stream is refused.
        wait_until(lambda: httpx.get(events, params={"after_sequence": "59990"}, timeout=5).status_code == 503,
                   timeout=20, what="the stalled stream holding the slot")
        # Then the stall timeout ends it, and the slot is free again (the tail of the log: 200).
        wait_until(lambda: httpx.get(events, params={"after_sequence": "59990"}, timeout=5).status_code == 200,
                   timeout=60, what="the slot freed")
        # The stalled connection was closed by the server: what it buffered, then EOF, and the
        # terminal event never came.
        stalled.settimeout(30)
        received = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            chunk = stalled.recv(1 << 16)
            if not chunk:
                break
            received += chunk
        else:
            raise AssertionError("the stalled stream was never closed")
        assert received.startswith(b"HTTP/1.1 200")
        assert b"StopEvent" not in received
    finally:
        stalled.close()


def test_retention_removes_finished_runs_and_keeps_running_ones(database_url, spawn):
    """`--retention 2s`: 50 finished runs are deleted (with their logs) within seconds of
    finishing, by the maintenance sweep; approvals that wait (and hibernate) and were started
    before them, so are older than the retention when the runs are gone, stay."""
    replica = spawn(database_url, extra=["--retention", "2s", "--idle-timeout", "500ms"])
    waiting = ("waiting-1", "waiting-2")
    for hid in waiting:
        httpx.post(f"{replica.url}/workflows/approval/run-nowait",
                   json={"start_event": {"request": hid}, "handler_id": hid}, timeout=30).raise_for_status()
    for n in range(50):
        assert httpx.post(f"{replica.url}/workflows/echo/run", json={"start_event": {"message": f"m{n}"}},
                          timeout=30).status_code == 200
    wait_until(lambda: httpx.get(f"{replica.url}/handlers", params={"status": "completed"},
                                 timeout=5).json()["handlers"] == [], timeout=30, what="finished runs purged")

    def count(sql: str) -> int:
        return int(subprocess.run(["psql", database_url, "-XAtq", "-c", sql],
                                  capture_output=True, text=True, check=True, timeout=30).stdout)
    assert count("SELECT count(*) FROM handlers WHERE status <> 'running'") == 0
    assert count("SELECT count(*) FROM event_log WHERE handler_id NOT IN (SELECT id FROM handlers)") == 0
    assert count("SELECT count(*) FROM inbox WHERE handler_id NOT IN (SELECT id FROM handlers)") == 0
    # The approvals are older than the retention by now, waiting and hibernated, and untouched.
    wait_until(lambda: all(httpx.get(f"{replica.url}/cluster/handlers/{hid}", timeout=5).json()["hibernated"]
                           for hid in waiting), timeout=20, what="the approvals hibernated")
    for hid in waiting:
        assert httpx.get(f"{replica.url}/handlers/{hid}").status_code == 202
    assert count("SELECT count(*) FROM event_log WHERE handler_id LIKE 'waiting-%'") >= 2


@pytest.mark.parametrize("flag,value,message", [
    ("--lease-ttl", "soon", "--lease-ttl"),
    ("--lease-ttl", "300ms", "--lease-ttl: must be at least 1s"),
    ("--lease-ttl", "1e300s", "--lease-ttl: '1e300s' is longer than ten years"),
    ("--retention", "1e20d", "--retention"),
    ("--batch-linger", "600ms", "--batch-linger: must be at most a tenth of --lease-ttl"),
    ("--idle-timeout", "-3s", "--idle-timeout"),
    ("--port", "99999", "--port"),
    ("--database-url", "mysql://x@y/z", "--database-url"),
    ("--log-level", "loud", "--log-level"),
    ("--max-body", "12", "--max-body"),
    ("--retention", "forever", "--retention"),
    ("--stream-stall-timeout", "1ms", "--stream-stall-timeout"),
    ("--batch-max", "0", "--batch-max"),
    ("--batch-max", "lots", "--batch-max"),
    ("--batch-linger", "5s", "--batch-linger"),
    ("--batch-linger", "soon", "--batch-linger"),
    ("--batch-writers", "0", "--batch-writers"),
    ("--api-key-file", "/nonexistent/keys", "--api-key-file: cannot read '/nonexistent/keys'"),
])
def test_bad_flags_stop_startup_naming_the_flag(flag, value, message):
    result = subprocess.run([BIN, "serve", f"{flag}={value}"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert message in result.stderr


def test_unreachable_database_names_host_and_port_never_the_password():
    result = subprocess.run([BIN, "migrate", "--database-url", "postgres://u:pa55word@127.0.0.1:1/db"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "127.0.0.1:1" in result.stderr and "pa55word" not in result.stderr + result.stdout


def test_run_command_prints_ticks_and_rejects_bad_input():
    ok = subprocess.run([BIN, "run", "counter", "--start", '{"count_to": 5}'], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0
    lines = [json.loads(line) for line in ok.stdout.splitlines()]
    assert [l["value"]["n"] for l in lines if l.get("type") == "Tick"] == [1, 2, 3, 4, 5]
    assert lines[-1] == {"result": 5}
    for args, needle in [(["run", "nope"], "unknown workflow"), (["run", "echo", "--start", "{bad"], "--start"),
                         (["run", "counter", "--start", '{"count_to": "x"}'], "must be an integer")]:
        bad = subprocess.run([BIN, *args], capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and needle in bad.stderr, (args, bad.stderr)


def test_superseded_replica_shuts_down_cleanly_while_connections_arrive(database_url, spawn):
    """A second process with the same replica id takes the registration; the first stops its
    handlers and exits by itself — gracefully, with its error, not by a crash — while new HTTP
    connections keep arriving (the randomized fault run once saw NIO trap here: a server task
    cancelled with an accepted connection still queued)."""
    older = spawn(database_url=database_url, replica_id="dup", extra=["--lease-ttl", "1s"])
    stop = threading.Event()

    def hammer():
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                httpx.get(f"{older.url}/health", timeout=1, headers={"Connection": "close"})
            except httpx.HTTPError:
                pass

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        spawn(database_url=database_url, replica_id="dup", extra=["--lease-ttl", "1s"])
        code = older.proc.wait(timeout=60)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    log = older.log_path.read_text(errors="replace")
    assert "Program crashed" not in log and "Fatal error" not in log, log[-3000:]
    assert code > 0, (code, log[-3000:])  # exited with its error, not killed by a signal
    assert "registered by another process" in log


def test_a_database_without_fsync_is_refused_at_startup(database_url, tmp_path):
    """fsync=off loses acknowledged commits in a crash of the server, on the same timeline: a
    replica refuses to start on it, naming the setting. (The test server runs with fsync off and
    says it is a throwaway, `leasehold.allow_fsync_off`; this database takes that back.)"""
    name = database_url.rsplit("/", 1)[1]
    psql(database_url, f"ALTER DATABASE {name} SET leasehold.allow_fsync_off = off")
    result = subprocess.run([BIN, "serve", "--port", str(free_port()), "--database-url", database_url],
                            capture_output=True, text=True, timeout=60, env=environment())
    assert result.returncode == 2, result.stderr[-2000:]
    assert "fsync=off" in result.stderr and "postgresql.conf" in result.stderr, result.stderr[-2000:]
