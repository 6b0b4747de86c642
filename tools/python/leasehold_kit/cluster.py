"""Helpers for multi-replica tests and drills: start handlers, read logs, check invariants."""

from __future__ import annotations

import json
import time

import httpx


def start(replica_url: str, workflow: str, start_event: dict, handler_id: str) -> dict:
    r = httpx.post(f"{replica_url}/workflows/{workflow}/run-nowait",
                   json={"start_event": start_event, "handler_id": handler_id}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def lease(url: str, handler_id: str) -> dict:
    r = httpx.get(f"{url}/cluster/handlers/{handler_id}", timeout=5)
    r.raise_for_status()
    return r.json()


def status(url: str, handler_id: str) -> str:
    return httpx.get(f"{url}/handlers/{handler_id}", timeout=5).json()["status"]


def full_log(url: str, handler_id: str) -> list[tuple[int, dict]]:
    """Every logged event (internal included) with its sequence number, from -1 to the terminal event.

    Read from the SSE stream because only it carries the sequence (`id:`); the NDJSON form has none,
    so a contiguity check over it could not fail. Call it on a finished handler: the stream then
    ends by itself after the terminal event."""
    return sse_log(url, handler_id, after="-1", timeout=30)


def sse_log(url: str, handler_id: str, after: str = "-1", timeout: float = 60) -> list[tuple[int, dict]]:
    """Reads the SSE stream (internal included) and returns (id, envelope) pairs."""
    out = []
    with httpx.stream("GET", f"{url}/events/{handler_id}",
                      params={"after_sequence": after, "include_internal": "true"}, timeout=timeout) as r:
        if r.status_code == 204:
            return []
        r.raise_for_status()
        current = None
        for line in r.iter_lines():
            if line.startswith("id:"):
                current = int(line[3:].strip())
            elif line.startswith("data:"):
                out.append((current, json.loads(line[5:].strip())))
    return out


def check_log(events: list[tuple[int, dict]]) -> dict:
    """The invariants every drill checks on one handler's log."""
    sequences = [s for s, _ in events]
    terminals = [e for _, e in events if "StopEvent" in ([e["type"]] + (e.get("types") or []))]
    return {
        "contiguous": sequences == list(range(len(sequences))),
        "terminals": len(terminals),
        "last_is_terminal": bool(events) and events[-1][1] in terminals,
        "ticks": [e["value"]["n"] for _, e in events if e["type"] == "Tick"],
        "terminal": terminals[-1] if terminals else None,
    }


def wait_all_finished(url: str, ids: list[str], timeout: float = 60) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    statuses: dict[str, str] = {}
    while time.monotonic() < deadline:
        statuses = {}
        for handler_id in ids:
            try:
                statuses[handler_id] = status(url, handler_id)
            except httpx.HTTPError:
                statuses[handler_id] = "unreachable"
        if all(s in ("completed", "failed", "cancelled") for s in statuses.values()):
            return statuses
        time.sleep(0.05)
    return statuses


def fence_counts(url: str) -> tuple[int, int]:
    fencing = httpx.get(f"{url}/cluster", timeout=5).json()["fencing"]
    return fencing["self_fences"], fencing["rejected_writes"]
