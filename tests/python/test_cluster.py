"""Multi-process tests: three real `leasehold` replicas on one real Postgres, killed, paused,
terminated and cut off from a restarted database. Every wait is bounded."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from cluster import check_log, fence_counts, full_log, lease, sse_log, start, status, wait_all_finished
from conftest import ROOT, wait_until

TTL = "2s"
TTL_SECONDS = 2.0


@pytest.fixture
def cluster(database_url, spawn):
    def make(count: int = 3, ttl: str = TTL, idle: str = "60s", env: dict | None = None, envs: list | None = None):
        replicas = []
        for index in range(count):
            extra = ["--lease-ttl", ttl, "--idle-timeout", idle]
            replica_env = dict(env or {})
            if envs and envs[index]:
                replica_env.update(envs[index])
            replicas.append(spawn(database_url=database_url, replica_id=f"r{index + 1}", extra=extra, env=replica_env))
        return replicas
    return make


def owned_counters(replica, count: int, ticks: int, tick_ms: int, prefix: str) -> list[str]:
    ids = [f"{prefix}-{i}" for i in range(count)]
    for handler_id in ids:
        start(replica.url, "counter", {"count_to": ticks, "tick_ms": tick_ms}, handler_id)
    # They run on the replica that created them, and have made progress.
    wait_until(lambda: all(lease(replica.url, h)["owner"] == replica.replica_id and lease(replica.url, h)["last_sequence"] > 3
                           for h in ids), what="counters running on their creator")
    return ids


def assert_counters_intact(url: str, ids: list[str], ticks: int):
    statuses = wait_all_finished(url, ids, timeout=60)
    assert set(statuses.values()) == {"completed"}, statuses
    for handler_id in ids:
        result = check_log(full_log(url, handler_id))
        assert result["contiguous"], handler_id
        assert result["terminals"] == 1 and result["last_is_terminal"], handler_id
        # Committed state and log move together: each tick exactly once, in order.
        assert result["ticks"] == list(range(1, ticks + 1)), (handler_id, result["ticks"])
        assert result["terminal"]["value"] == {"result": ticks}


def test_kill9_owner_handlers_finish_elsewhere(cluster):
    r1, r2, r3 = cluster()
    ids = owned_counters(r1, 6, ticks=40, tick_ms=40, prefix="k9")
    before = {h: lease(r2.url, h)["last_sequence"] for h in ids}
    killed_at = time.monotonic()
    r1.kill9()
    # Failover: every handler has a new owner that writes new events.
    moved = wait_until(lambda: all(lease(r2.url, h)["owner"] in ("r2", "r3") and lease(r2.url, h)["last_sequence"] > before[h]
                                   for h in ids), timeout=TTL_SECONDS + 10, what="failover")
    failover = time.monotonic() - killed_at
    print(f"\nfailover after kill -9: {failover:.2f}s (TTL {TTL_SECONDS}s)")
    assert moved
    assert failover <= TTL_SECONDS + 3, f"failover took {failover:.2f}s"
    assert_counters_intact(r2.url, ids, 40)


def test_sigstop_longer_than_ttl_is_fenced(cluster):
    r1, r2, r3 = cluster()
    ids = owned_counters(r1, 4, ticks=40, tick_ms=40, prefix="stop")
    r1.signal(signal.SIGSTOP)
    wait_until(lambda: all(lease(r2.url, h)["owner"] in ("r2", "r3") for h in ids), timeout=TTL_SECONDS + 10,
               what="handlers moved off the paused replica")
    r1.signal(signal.SIGCONT)
    # On waking, r1 either fences itself before writing or has its writes rejected by the token.
    wait_until(lambda: sum(fence_counts(r1.url)) > 0, timeout=10, what="fence actions on the stale replica")
    self_fences, rejected = fence_counts(r1.url)
    print(f"\nstale replica: self-fences {self_fences}, writes rejected {rejected}")
    assert_counters_intact(r2.url, ids, 40)
    assert r1.proc.poll() is None, "the stale replica must survive and keep serving"


def test_token_alone_keeps_a_stale_replica_out(cluster):
    """Self-fencing disabled on r1 (test-only setting): only the database-side token stops it."""
    r1, r2, r3 = cluster(envs=[{"LEASEHOLD_TEST_DISABLE_SELF_FENCING": "1"}, None, None])
    ids = owned_counters(r1, 4, ticks=40, tick_ms=40, prefix="tok")
    r1.signal(signal.SIGSTOP)
    wait_until(lambda: all(lease(r2.url, h)["owner"] in ("r2", "r3") for h in ids), timeout=TTL_SECONDS + 10,
               what="handlers moved off the paused replica")
    r1.signal(signal.SIGCONT)
    wait_until(lambda: fence_counts(r1.url)[1] > 0, timeout=10, what="rejected writes")
    self_fences, rejected = fence_counts(r1.url)
    assert self_fences == 0 and rejected > 0
    assert_counters_intact(r2.url, ids, 40)


def test_sigterm_hands_off_without_waiting_for_ttl(cluster):
    r1, r2, r3 = cluster(ttl="10s")
    ids = owned_counters(r1, 3, ticks=30, tick_ms=40, prefix="term")
    waiting = ["term-wait-0", "term-wait-1"]
    for handler_id in waiting:
        start(r1.url, "approval", {"request": handler_id}, handler_id)
    wait_until(lambda: all(lease(r1.url, h)["last_sequence"] >= 2 for h in waiting), what="approvals waiting")
    began = time.monotonic()
    code = r1.terminate(timeout=10)
    shutdown = time.monotonic() - began
    assert code == 0
    moved = wait_until(lambda: all(lease(r2.url, h)["owner"] in ("r2", "r3") for h in ids), timeout=5,
                       what="hand-off")
    handoff = time.monotonic() - began
    print(f"\nSIGTERM: exit after {shutdown:.2f}s, handlers moved after {handoff:.2f}s (TTL 10s)")
    assert moved and handoff < 5
    # Idle approvals are released (not owned by anyone) and continue on any replica when answered.
    for handler_id in waiting:
        assert lease(r2.url, handler_id)["owner"] != "r1"
        r = httpx.post(f"{r3.url}/events/{handler_id}",
                       json={"event": {"type": "HumanResponseEvent", "value": {"response": "ok"}}}, timeout=10)
        assert r.status_code == 200
    assert_counters_intact(r2.url, ids, 30)
    assert set(wait_all_finished(r2.url, waiting).values()) == {"completed"}


def test_postgres_restart_under_load(cluster):
    pg_dir = os.environ.get("LEASEHOLD_PG_DIR")
    if not pg_dir:
        pytest.fail("LEASEHOLD_PG_DIR is not set: run through scripts/test")
    r1, r2, r3 = cluster()
    ids = owned_counters(r1, 3, ticks=40, tick_ms=40, prefix="pgr") + owned_counters(r2, 3, ticks=40, tick_ms=40, prefix="pgr2")
    subprocess.run([str(ROOT / "scripts" / "pg"), "restart", pg_dir], check=True, timeout=60)
    for replica in (r1, r2, r3):
        replica.wait_ready(timeout=30)
    assert_counters_intact(r3.url, ids, 40)
    for replica in (r1, r2, r3):
        assert replica.proc.poll() is None, f"{replica.replica_id} crashed: {replica.log_tail()}"


def test_hitl_across_replicas(cluster):
    a, b, c = cluster(idle="300ms")
    start(a.url, "approval", {"request": "ship it"}, "hitl-x")
    result: dict = {}

    def read():
        result["events"] = sse_log(b.url, "hitl-x", after="-1", timeout=60)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_until(lambda: lease(c.url, "hitl-x")["hibernated"], timeout=10, what="hibernation while streamed")
    assert lease(c.url, "hitl-x")["owner"] is None
    r = httpx.post(f"{c.url}/events/hitl-x",
                   json={"event": {"type": "HumanResponseEvent", "value": {"_data": {"response": "approved"}}}}, timeout=10)
    assert r.status_code == 200
    reader.join(timeout=30)
    assert not reader.is_alive()
    checked = check_log(result["events"])
    assert checked["contiguous"] and checked["terminals"] == 1
    assert checked["terminal"]["value"] == {"result": {"request": "ship it", "response": "approved"}}
    assert lease(a.url, "hitl-x")["owner"] is None  # finished: nobody holds it
