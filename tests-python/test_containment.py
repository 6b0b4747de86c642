"""Crash containment (issue #28): a step that traps ends the process it first ran in and nothing
else. Three real replicas on one real Postgres, no restarts; the debug build's `poison` workflow
traps on every attempt (an unchecked overflow or a failed precondition), as user code can."""

from __future__ import annotations

import re
import socket
import subprocess
import time

import httpx
import pytest

from conftest import BIN, psql, wait_until
from leasehold_kit.cluster import lease, start, status, wait_all_finished
from test_cluster import assert_counters_intact, owned_counters

TTL = "2s"
TICKS = 40


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    match = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def port_bindable(port: int) -> bool:
    """Whether a server could listen on the port now (with SO_REUSEADDR, as a replica binds)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def sessions_of(database_url: str, replica_id: str) -> int:
    return int(psql(database_url, f"SELECT count(*) FROM pg_stat_activity WHERE application_name = 'leasehold {replica_id}'"))


def answer(url: str, handler_id: str):
    r = httpx.post(f"{url}/events/{handler_id}",
                   json={"event": {"type": "HumanResponseEvent", "value": {"response": "yes"}}}, timeout=10)
    assert r.status_code == 200, r.text


@pytest.fixture
def cluster(database_url, spawn):
    return [spawn(database_url=database_url, replica_id=f"r{i}", extra=["--lease-ttl", TTL, "--idle-timeout", "60s"])
            for i in (1, 2, 3)]


@pytest.mark.parametrize("mode,value", [("overflow", 2**62), ("precondition", 1)])
def test_a_trapping_step_costs_one_process_and_is_quarantined(cluster, database_url, mode, value):
    r1, r2, r3 = cluster
    # Bystanders on r1, of every kind that shares a process with a poison step: neighbours in a
    # step (counters ticking), approvals waiting for an answer, long timers.
    counters = owned_counters(r1, 10, TICKS, 100, f"tick-{mode}")
    approvals = [f"ask-{mode}-{i}" for i in range(5)]
    timers = [f"timer-{mode}-{i}" for i in range(5)]
    for handler_id in approvals:
        start(r1.url, "approval", {"request": handler_id}, handler_id)
    for handler_id in timers:
        start(r1.url, "timer", {"seconds": 6}, handler_id)
    for handler_id in approvals + timers:
        wait_until(lambda: lease(r1.url, handler_id)["owner"] == "r1", what=f"{handler_id} on r1")

    poison = f"poison-{mode}"
    accepted = time.monotonic()  # (before the request: the 2 s below are counted from no later than the trap)
    try:
        start(r1.url, "poison", {"mode": mode, "value": value}, poison)
    except httpx.TransportError:
        pass  # r1 may die before its answer is written; the run was durable before the step ran

    # r1 dies of the trap (no restart); the port and its database sessions are free within 2 s.
    wait_until(lambda: port_bindable(r1.port), timeout=2, interval=0.02, what="r1's port free")
    wait_until(lambda: sessions_of(database_url, "r1") == 0, timeout=max(0.1, 2 - (time.monotonic() - accepted)),
               interval=0.02, what="no database session of r1")
    freed = time.monotonic() - accepted
    assert r1.proc.wait(timeout=60) < 0, "r1 ended by a signal"
    r1.stopped = True

    for handler_id in approvals:
        wait_until(lambda: answer(r2.url, handler_id) or True, what=f"answer to {handler_id}")
    assert_counters_intact(r2.url, counters, TICKS)
    finished = wait_all_finished(r2.url, approvals + timers, timeout=90)
    assert set(finished.values()) == {"completed"}, finished

    # The poison handler is set aside on the wire: failed, the reason in its error.
    assert wait_all_finished(r2.url, [poison], timeout=60) == {poison: "failed"}
    record = httpx.get(f"{r2.url}/handlers/{poison}", timeout=5).json()
    assert record["error"].startswith("quarantined: step 'explode' ended its process with signal"), record
    # Exactly one quarantine, on the survivors; nothing else quarantined (every bystander completed).
    assert metric(r2.url, "leasehold_quarantines_total") + metric(r3.url, "leasehold_quarantines_total") == 1
    crashed = psql(database_url, "SELECT string_agg(handler_id, ',' ORDER BY handler_id) FROM handler_crashes")
    assert poison in crashed.split(","), crashed
    # The two survivors stayed up throughout.
    for replica in (r2, r3):
        assert replica.proc.poll() is None, replica.log_tail()
        assert httpx.get(f"{replica.url}/health", timeout=5).status_code == 200

    # Released, it runs again (isolated) and is quarantined again: still no replica dies.
    assert httpx.post(f"{r3.url}/handlers/{poison}/release", timeout=10).json() == {"status": "released"}
    wait_until(lambda: metric(r2.url, "leasehold_quarantines_total") + metric(r3.url, "leasehold_quarantines_total") == 2,
               timeout=60, what="the released handler quarantined again")
    assert status(r2.url, poison) == "failed"
    # The operator's command does the same as the route.
    done = subprocess.run([BIN, "release", poison, "--database-url", database_url],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and f"released {poison}" in done.stdout, done.stderr[-2000:]
    wait_until(lambda: metric(r2.url, "leasehold_quarantines_total") + metric(r3.url, "leasehold_quarantines_total") == 3,
               timeout=60, what="released by the command, quarantined again")
    refused = subprocess.run([BIN, "release", "no-such-handler", "--database-url", database_url],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "is not quarantined" in refused.stderr, refused.stderr[-2000:]
    for replica in (r2, r3):
        assert replica.proc.poll() is None, replica.log_tail()
    print(f"port and sessions free {freed:.2f} s after the poison run was sent")


def test_release_answers_for_what_is_not_quarantined(cluster):
    r1 = cluster[0]
    start(r1.url, "echo", {"message": "hi"}, "done")
    assert wait_all_finished(r1.url, ["done"]) == {"done": "completed"}
    r = httpx.post(f"{r1.url}/handlers/done/release", timeout=10)
    assert r.status_code == 409 and "not quarantined" in r.json()["detail"], r.text
    r = httpx.post(f"{r1.url}/handlers/nope/release", timeout=10)
    assert r.status_code == 404, r.text
