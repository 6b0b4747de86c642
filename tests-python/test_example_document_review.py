"""The example application (Examples/document-review): a package outside Sources that depends on
Leasehold by path and brings its own workflow, run as three real replicas of its own binary on one
real Postgres, with its external systems (Examples/document-review/services.py) as a real process.

- a kill -9 of the owner mid-run: every review completes and the records system keeps each
  decision exactly once;
- a SIGSTOP of the owner past its TTL while its recording step holds before writing, then SIGCONT:
  its late write, under the old fencing token, reaches the records system and is refused there;
- the example README's commands, run as written.

The example is built by scripts/test (`swift build` in its folder); LEASEHOLD_REQUIRE_EXAMPLE=1
makes a missing binary a failure rather than a skip."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, free_port, wait_until
from leasehold_kit.cluster import check_log, full_log, lease, start, wait_all_finished
from leasehold_kit.readme import run_commands

EXAMPLE = ROOT / "Examples" / "document-review"
EXAMPLE_BIN = os.environ.get("LEASEHOLD_EXAMPLE_BIN", str(EXAMPLE / ".build" / "debug" / "document-review"))
TTL = "2s"


@pytest.fixture
def example_bin():
    if not Path(EXAMPLE_BIN).exists():
        if os.environ.get("LEASEHOLD_REQUIRE_EXAMPLE") == "1":
            pytest.fail(f"{EXAMPLE_BIN} is missing: scripts/test builds it")
        pytest.skip("the example is not built (scripts/test builds it)")
    return EXAMPLE_BIN


@pytest.fixture
def services(tmp_path):
    """The review's external systems, on a loopback port of their own; stopped by PID."""
    port = free_port()
    log = open(tmp_path / "services.log", "wb")
    proc = subprocess.Popen([sys.executable, str(EXAMPLE / "services.py"), "--port", str(port), "--fail-first", "2"],
                            stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/records", timeout=1).status_code == 200, 10, what="services up")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def review_cluster(database_url, spawn, example_bin, services):
    env = {"CLASSIFIER_URL": services, "RECORDS_URL": services}
    return [spawn(database_url=database_url, replica_id=f"r{i}", binary=example_bin, env=env,
                  extra=["--lease-ttl", TTL, "--idle-timeout", "60s"]) for i in (1, 2, 3)]


def records(services: str) -> dict:
    return httpx.get(f"{services}/records", timeout=5).json()


def review_result(url: str, handler_id: str) -> dict:
    """The bare result of a completed review (the handler record carries the StopEvent)."""
    return httpx.get(f"{url}/handlers/{handler_id}", timeout=5).json()["result"]["value"]["result"]


def decide(replica, handler_id: str, approved: bool):
    r = httpx.post(f"{replica.url}/events/{handler_id}",
                   json={"event": {"type": "Decision", "value": {"approved": approved, "reviewer": "ann"}}},
                   timeout=10)
    assert r.status_code == 200, r.text


def logged(url: str, handler_id: str, predicate) -> bool:
    """Whether the handler's durable log so far holds an event matching `predicate` (the stream
    is read up to what is committed: `after_sequence` plus a short read)."""
    with httpx.stream("GET", f"{url}/events/{handler_id}",
                      params={"after_sequence": "-1", "include_internal": "true"}, timeout=5) as r:
        try:
            for line in r.iter_lines():
                if line.startswith("data:") and predicate(json.loads(line[5:].strip())):
                    return True
        except httpx.ReadTimeout:
            return False
    return False


def waiting_for_decision(url: str, handler_id: str) -> bool:
    return logged(url, handler_id, lambda e: e["type"] == "ReviewRequested")


def recording(url: str, handler_id: str) -> bool:
    return logged(url, handler_id, lambda e: e["type"] == "StepStateChanged"
                  and e["value"]["name"] == "record" and e["value"]["step_state"] == "running")


def test_kill9_of_the_owner_mid_review(review_cluster, services):
    r1, r2, r3 = review_cluster
    ids = [f"doc-{i}" for i in range(6)]
    for i, handler_id in enumerate(ids):
        start(r1.url, "review", {"document": handler_id, "text": f"contract {i}" if i % 2 else "memo",
                                 "hold_ms": 3000}, handler_id)
    # The classifier failed twice for each (retried), then every review waits for its person.
    for handler_id in ids:
        wait_until(lambda: waiting_for_decision(r1.url, handler_id), 60, what=f"{handler_id} waiting")
        assert lease(r1.url, handler_id)["owner"] == "r1"
    for i, handler_id in enumerate(ids):
        decide(r2, handler_id, approved=i % 3 != 0)
    # The decisions are durable; r1 is in (or about to enter) the recording steps, which hold for
    # 3 s before writing: it dies before any of them writes.
    r1.kill9()
    statuses = wait_all_finished(r2.url, ids, timeout=90)
    assert set(statuses.values()) == {"completed"}, statuses
    seen = records(services)
    assert seen["refused"] == 0, seen
    assert seen["classify_calls"] >= 3 * len(ids), seen
    for i, handler_id in enumerate(ids):
        result = review_result(r2.url, handler_id)
        assert result["recorded"] is True and result["approved"] == (i % 3 != 0), result
        record = seen["records"][handler_id]
        # Each decision reached the records system once, from the new owner, under its token.
        assert record["writes"] == 1, record
        assert record["approved"] == result["approved"]
        final = lease(r2.url, handler_id)
        assert final["owner"] in ("r2", "r3") or final["owner"] is None, final
        assert record["token"] > 0
        log = check_log(full_log(r2.url, handler_id))
        assert log["contiguous"] and log["terminals"] == 1 and log["last_is_terminal"], log


def test_a_paused_owners_late_write_is_refused_by_the_records_system(review_cluster, services):
    r1, r2, r3 = review_cluster
    handler_id = "doc-paused"
    start(r1.url, "review", {"document": handler_id, "text": "agreement", "hold_ms": 3000}, handler_id)
    wait_until(lambda: waiting_for_decision(r1.url, handler_id), 60, what="waiting for the decision")
    decide(r2, handler_id, approved=True)
    # r1's recording step has started (durably logged) and holds 3 s before it writes: pause r1.
    wait_until(lambda: recording(r2.url, handler_id), 30, what="the recording step running on r1")
    old = lease(r2.url, handler_id)
    assert old["owner"] == "r1", old
    r1.signal(signal.SIGSTOP)
    try:
        # Past r1's TTL another replica claims the handler under a higher token, runs the
        # recording step again and writes: the records system keeps that write.
        kept = wait_until(lambda: (records(services)["records"].get(handler_id) or {}).get("token", 0)
                          > old["fencing_token"], 60, what="the new owner's write kept")
        assert kept
    finally:
        r1.signal(signal.SIGCONT)
    # r1 wakes past its hold and writes with its old token: refused by the token compare-and-set.
    refusal = wait_until(lambda: [x for x in records(services)["refusals"] if x["document"] == handler_id], 30,
                         what="the stale write refused")
    assert refusal[0]["token"] == old["fencing_token"], refusal
    statuses = wait_all_finished(r2.url, [handler_id], timeout=60)
    assert statuses[handler_id] == "completed", statuses
    result = review_result(r2.url, handler_id)
    assert result["recorded"] is True, result
    seen = records(services)
    assert seen["records"][handler_id]["writes"] == 1 and seen["refused"] >= 1, seen
    log = check_log(full_log(r2.url, handler_id))
    assert log["contiguous"] and log["terminals"] == 1, log


def test_readme_commands_as_written(example_bin):
    """Runs every ```sh block of Examples/document-review/README.md, in order, in that folder."""
    transcript = run_commands(EXAMPLE / "README.md", timeout=600)
    assert '"recorded": true' in transcript or '"recorded":true' in transcript, transcript[-3000:]
