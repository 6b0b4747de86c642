"""Nested workflows across real processes: a kill -9 of the replica that owns a parent (and, as
its creator, the child) mid-child. The child is started once — one `created` in its lease
history, every tick once in its log — and the parent completes with the child's result."""

from __future__ import annotations

import httpx

from conftest import wait_until
from leasehold_kit.cluster import check_log, full_log, lease, start, wait_all_finished

TTL = "2s"


def test_kill9_of_the_parents_owner_mid_child(database_url, spawn):
    r1, r2, r3 = [spawn(database_url=database_url, replica_id=f"r{i}", extra=["--lease-ttl", TTL])
                  for i in (1, 2, 3)]
    parent = "nest-1"
    child = f"{parent}~0.1"
    start(r1.url, "nested", {"children": 1, "count_to": 30, "tick_ms": 150}, parent)
    # The child exists once its creation committed, and is ticking on r1.
    held = wait_until(lambda: (lambda record: record if record["last_sequence"] > 3 else None)(lease(r1.url, child)),
                      30, what="the child ticking", ignoring=(httpx.HTTPError, OSError, KeyError))
    assert held["owner"] == "r1" and lease(r1.url, parent)["owner"] in ("r1", None), held
    r1.kill9()
    statuses = wait_all_finished(r2.url, [parent, child], timeout=90)
    assert statuses == {parent: "completed", child: "completed"}, statuses
    result = httpx.get(f"{r2.url}/handlers/{parent}", timeout=5).json()["result"]["value"]["result"]
    assert result == {"total": 30}, result
    history = httpx.get(f"{r2.url}/cluster/handlers/{child}", timeout=5).json()["lease_history"]
    kinds = [change["change"] for change in history]
    assert kinds.count("created") == 1, kinds
    child_log = check_log(full_log(r2.url, child))
    assert child_log["contiguous"] and child_log["terminals"] == 1, child_log
    assert child_log["ticks"] == list(range(1, 31)), child_log["ticks"]
    parent_log = check_log(full_log(r2.url, parent))
    assert parent_log["contiguous"] and parent_log["terminals"] == 1 and parent_log["last_is_terminal"], parent_log
