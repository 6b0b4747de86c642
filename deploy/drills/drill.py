#!/usr/bin/env python3
"""Failover drills against deploy/local-cluster, with invariant checks.

    deploy/drills/run kill9 [--runs N]       one drill
    deploy/drills/all [--runs N]             every drill; writes deploy/drills/results.md
    deploy/drills/run pg-switchover pg-crash-primary [--runs N]
                                             PostgreSQL failover drills (the cluster on deploy/pg-ha)

Each run starts a workload through the load balancer (counters, approvals, timers), disrupts the
cluster, answers the approvals, waits (bounded) for every handler to finish, and checks: no
accepted event lost, every log 0..n without gap or repeat with exactly one terminal event at the
end, every handler completed with the right result, fence actions counted, failover time. Each
run prints one JSON line. Loopback only; every wait is bounded.
"""

from __future__ import annotations

import argparse
from datetime import datetime
import json
import os
import shutil
import signal
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
from leasehold_kit.cluster import check_log, full_log
from leasehold_kit.durations import parse_duration
from leasehold_kit.netns import Namespace, PartitionableReplica
from leasehold_kit.procs import sh
from leasehold_kit.waiting import wait_for_cluster as wait_until

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "deploy" / "local-cluster"
DIR = Path(os.environ.get("LH_DIR", ROOT / "deploy" / ".cluster"))
LB = f"http://127.0.0.1:{os.environ.get('LH_PORT', '8080')}"
TTL = parse_duration(os.environ.get("LH_LEASE_TTL", "5s"), "LH_LEASE_TTL")
REPLICAS = ["r1", "r2", "r3"]
DRILLS = ["kill9", "pause", "rolling-restart", "pg-restart", "conn-drop", "partition"]
# Drills of PostgreSQL's own failover: the cluster runs on deploy/pg-ha (not part of `all`).
HA_DRILLS = ["pg-switchover", "pg-crash-primary"]
PG_HA = ROOT / "deploy" / "pg-ha"



def replica_url(r: str) -> str:
    return f"http://127.0.0.1:{sh(CLUSTER, 'port', r)}"


def get(url: str, path: str) -> dict:
    r = httpx.get(url + path, timeout=5)
    r.raise_for_status()
    return r.json()


def fences() -> int:
    total = 0
    for r in REPLICAS:
        try:
            f = get(replica_url(r), "/cluster")["fencing"]
            total += f["self_fences"] + f["rejected_writes"]
        except httpx.HTTPError:
            pass
    return total


class Workload:
    def __init__(self, tag: str, counters: int = 6, approvals: int = 4, timers: int = 3, ticks: int | None = None):
        # Counters tick every 60 ms and must outlive the fault window (up to 2 × TTL, plus setting
        # up on a loaded machine), or a drill would find nothing left to move.
        self.tag, self.ticks = tag, ticks or max(50, int((4 * TTL + 8) / 0.06))
        self.counters = [f"{tag}-c{i}" for i in range(counters)]
        self.approvals = [f"{tag}-a{i}" for i in range(approvals)]
        self.timers = [f"{tag}-t{i}" for i in range(timers)]
        self.answered: dict[str, str] = {}

    @property
    def all(self) -> list[str]:
        return self.counters + self.approvals + self.timers

    def start(self):
        for h in self.counters:
            post(f"/workflows/counter/run-nowait", {"start_event": {"count_to": self.ticks, "tick_ms": 60}, "handler_id": h})
        for h in self.approvals:
            post(f"/workflows/approval/run-nowait", {"start_event": {"request": h}, "handler_id": h})
        for h in self.timers:
            post(f"/workflows/timer/run-nowait", {"start_event": {"seconds": TTL + 1.5}, "handler_id": h})
        wait_until(lambda: all(get(LB, f"/cluster/handlers/{h}")["last_sequence"] >= 3 for h in self.counters),
                   30, "workload running")

    def answer(self):
        for h in self.approvals:
            if h in self.answered:
                continue  # answered already (the database drills answer during the outage)
            answer = "yes-" + h
            post(f"/events/{h}", {"event": {"type": "HumanResponseEvent", "value": {"response": answer}}})
            self.answered[h] = answer

    def check(self) -> dict:
        def finished():
            return all(httpx.get(f"{LB}/handlers/{h}", timeout=5).json()["status"] != "running" for h in self.all)
        wait_until(finished, 120, "every handler finished")
        lost = bad_sequences = incomplete = 0
        for h in self.all:
            record = httpx.get(f"{LB}/handlers/{h}", timeout=5).json()
            result = check_log(full_log(LB, h))
            if not result["contiguous"] or result["terminals"] != 1 or not result["last_is_terminal"]:
                bad_sequences += 1
            if record["status"] != "completed":
                incomplete += 1
                continue
            value = record["result"]["value"]["result"]
            if h in self.counters and (value != self.ticks or result["ticks"] != list(range(1, self.ticks + 1))):
                lost += 1
            if h in self.approvals and value != {"request": h, "response": self.answered[h]}:
                lost += 1
            if h in self.timers and value != "rang":
                lost += 1
        return {"lost": lost, "bad_sequences": bad_sequences, "incomplete": incomplete}


def post(path: str, body: dict, deadline_s: float = 90.0):
    """POSTs through the load balancer, retrying while it has no ready replica, for at most
    `deadline_s` seconds. The bound is in time, not attempts: while every replica is unready the
    load balancer answers 503 at once, so a count of attempts would end after a few seconds, and
    the database drills answer during an outage that lasts 20-30 s on a loaded machine (a crashed
    primary: pg_auto_failover's detection plus promotion, deploy/pg-ha). Every POST here names its
    handler, so a retry of a request whose first attempt was in fact applied answers 409 (handler
    exists, or already answered): after an attempt with an unknown outcome, that counts as
    applied."""
    last = None
    uncertain = False
    give_up = time.monotonic() + deadline_s
    while True:
        try:
            r = httpx.post(LB + path, json=body, timeout=10)
            if r.status_code == 409 and uncertain:
                return r.json()
            if r.status_code < 500:
                assert r.status_code == 200, (path, r.status_code, r.text)
                return r.json()
            last = f"{r.status_code}: {r.text}"
        except httpx.HTTPError as error:
            last = str(error)
        uncertain = True
        if time.monotonic() >= give_up:
            raise RuntimeError(f"POST {path} kept failing for {deadline_s:.0f} s: {last}")
        time.sleep(0.1)


def owners(handlers: list[str]) -> dict[str, str | None]:
    return {h: get(LB, f"/cluster/handlers/{h}")["owner"] for h in handlers}


def busiest_owner(work: Workload) -> str:
    counts: dict[str, int] = {}
    for owner in owners(work.counters).values():
        if owner:
            counts[owner] = counts.get(owner, 0) + 1
    if not counts:
        raise RuntimeError("no running counter is owned by any replica: nothing for the drill to move")
    return max(counts, key=counts.get)


def victims_handlers(victim: str, work: Workload) -> tuple[list[str], dict[str, int]]:
    """The victim's running counters and the fencing token it holds for each, read before the
    disruption."""
    views = {h: get(LB, f"/cluster/handlers/{h}") for h in work.counters}
    moved = [h for h, view in views.items() if view["owner"] == victim and view["status"] == "running"]
    if not moved:
        raise RuntimeError(f"{victim} runs no counter: nothing for the drill to move")
    return moved, {h: views[h]["fencing_token"] for h in moved}


def measure_failover(victim: str, before: tuple[list[str], dict[str, int]], started: float) -> float:
    """Seconds from the disruption until every handler the victim held was claimed elsewhere: its
    fencing token rose above the victim's (tokens only rise, so this stays true once seen). A
    handler that finished under the victim's own token finished before the disruption took effect
    and did not move. Reads through a healthy replica, never through the victim."""
    moved, tokens = before
    observer = replica_url(next(r for r in REPLICAS if r != victim)) if victim in REPLICAS else LB
    def resolved(h):
        view = get(observer, f"/cluster/handlers/{h}")
        return view["fencing_token"] > tokens[h] or view["status"] != "running"
    wait_until(lambda: all(resolved(h) for h in moved), TTL + 30, "handlers moved")
    return time.monotonic() - started


def wait_replicas_ready():
    for r in REPLICAS:
        wait_until(lambda: httpx.get(replica_url(r) + "/ready", timeout=2).status_code == 200, 30, f"{r} ready")


def drill_kill9(work: Workload) -> dict:
    victim = busiest_owner(work)
    before = victims_handlers(victim, work)
    started = time.monotonic()
    sh(CLUSTER, "kill", victim)
    failover = measure_failover(victim, before, started)
    sh(CLUSTER, "start", victim)
    return {"failover_s": round(failover, 3)}


def drill_pause(work: Workload) -> dict:
    victim = busiest_owner(work)
    pid = int(sh(CLUSTER, "pid", victim))
    before = victims_handlers(victim, work)
    url = replica_url(victim)
    fences_before = sum(get(url, "/cluster")["fencing"].values())  # counted since the replica started
    started = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        failover = measure_failover(victim, before, started)
        time.sleep(max(0.0, 2 * TTL - (time.monotonic() - started)))
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: sum(get(url, "/cluster")["fencing"].values()) > fences_before, 15, "stale replica fenced")
    return {"failover_s": round(failover, 3),
            "stale_replica_fences": sum(get(url, "/cluster")["fencing"].values()) - fences_before}


def drill_rolling_restart(work: Workload) -> dict:
    slowest = 0.0
    for r in REPLICAS:
        started = time.monotonic()
        sh(CLUSTER, "stop", r)
        slowest = max(slowest, time.monotonic() - started)
        sh(CLUSTER, "start", r)
    return {"slowest_shutdown_s": round(slowest, 3)}


def drill_pg_restart(work: Workload) -> dict:
    started = time.monotonic()
    sh(ROOT / "scripts" / "pg", "restart", DIR / "pg")
    wait_replicas_ready()
    return {"recovered_s": round(time.monotonic() - started, 3)}


def drill_conn_drop(work: Workload) -> dict:
    url = sh(CLUSTER, "url")
    killed = sh("psql", url, "-XAtc",
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    wait_replicas_ready()
    return {"connections_killed": int(killed)}


class Progress(threading.Thread):
    """Samples the counters' total progress (the sum of their last sequences, read through the load
    balancer) every 50 ms; the outage is the longest stretch without progress. Reads fail while
    the database is away, so progress seen is progress checkpointed."""

    def __init__(self, handlers: list[str]):
        super().__init__(daemon=True)
        self.handlers, self.stopped, self.times = handlers, threading.Event(), []

    def run(self):
        last = None
        deadline = time.monotonic() + 600
        while not self.stopped.is_set() and time.monotonic() < deadline:
            try:
                total = sum(httpx.get(f"{LB}/cluster/handlers/{h}", timeout=2).json()["last_sequence"]
                            for h in self.handlers)
                if last is None or total > last:
                    self.times.append(time.monotonic())
                    last = total
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            self.stopped.wait(0.05)

    def outage(self, fault: float) -> float:
        """The longest time without progress around the fault (from the last progress before it)."""
        self.stopped.set()
        self.join(10)
        before = [t for t in self.times if t <= fault]
        after = [t for t in self.times if t > fault]
        if not before or not after:
            raise RuntimeError("no progress seen on both sides of the fault")
        points = [before[-1]] + after
        return max(b - a for a, b in zip(points, points[1:]))


def pg_ha_drill(work: Workload, fault) -> dict:
    """Runs `fault` against the database while the workload runs; answers the approvals during
    the outage; waits until every replica is ready again by itself."""
    progress = Progress(work.counters)
    progress.start()
    wait_until(lambda: len(progress.times) >= 3, 30, "progress sampled")
    primary_before = sh(PG_HA, "primary", DIR / "pg-ha").strip()
    started = time.monotonic()
    detail = fault()
    work.answer()  # through the outage: each POST retries (bounded) until a replica takes it
    wait_replicas_ready()
    wait_until(lambda: len([t for t in progress.times if t > time.monotonic() - 1]) > 0, 60, "progress again")
    outage = progress.outage(started)
    primary_after = sh(PG_HA, "primary", DIR / "pg-ha").strip()
    return {"outage_s": round(outage, 3), "primary": f"{primary_before} -> {primary_after}", **detail}


def drill_pg_switchover(work: Workload) -> dict:
    def switchover():
        sh(PG_HA, "switchover", DIR / "pg-ha", timeout=120)
        return {}

    return pg_ha_drill(work, switchover)


def drill_pg_crash_primary(work: Workload) -> dict:
    crashed: dict = {}

    def crash():
        crashed["node"] = sh(PG_HA, "crash-primary", DIR / "pg-ha").strip()
        return {"crashed": crashed["node"]}

    try:
        return pg_ha_drill(work, crash)
    finally:
        if "node" in crashed:  # back as a standby, for the next run
            sh(PG_HA, "restart", crashed["node"], DIR / "pg-ha")
            sh(PG_HA, "wait-healthy", DIR / "pg-ha", timeout=180)


class Partitioned(PartitionableReplica):
    """A fourth replica inside its own network namespace (leasehold_kit.netns), on the cluster's
    database; the drill cuts its link for 2×TTL."""

    def __init__(self):
        super().__init__(ROOT, DIR, int(LB.rsplit(":", 1)[1]), "r4-partitioned", {"LEASEHOLD_LEASE_TTL": f"{TTL}s"})

    def start(self):
        self.create()
        wait_replicas_ready()  # the replicas reconnect after PostgreSQL's restart
        super().start()


def prepare_partition() -> Partitioned | None:
    reason = Namespace.unavailable()
    if reason:
        raise Skipped(reason)
    replica = Partitioned()
    try:
        replica.start()
    except BaseException:
        replica.stop()
        raise
    return replica


class Skipped(Exception):
    pass


def drill_partition(work: Workload, replica: Partitioned) -> dict:
    """r4, in its own network namespace, loses its link to Postgres (and to everyone) for 2×TTL."""
    mine = [f"{work.tag}-p{i}" for i in range(4)]
    for h in mine:
        r = httpx.post(f"{replica.url}/workflows/counter/run-nowait",
                       json={"start_event": {"count_to": work.ticks, "tick_ms": 60}, "handler_id": h}, timeout=10)
        assert r.status_code == 200, r.text
    work.counters.extend(mine)
    wait_until(lambda: all(get(LB, f"/cluster/handlers/{h}")["last_sequence"] >= 3 for h in mine), 30, "r4 working")
    before = (mine, {h: get(LB, f"/cluster/handlers/{h}")["fencing_token"] for h in mine})
    started = time.monotonic()
    replica.ns.cut()
    try:
        failover = measure_failover("r4-partitioned", before, started)
        time.sleep(max(0.0, 2 * TTL - (time.monotonic() - started)))  # the partition lasts 2×TTL
    finally:
        replica.ns.heal()
    wait_until(lambda: sum(get(replica.url, "/cluster")["fencing"].values()) > 0, 20, "partitioned replica fenced")
    fenced = sum(get(replica.url, "/cluster")["fencing"].values())
    return {"failover_s": round(failover, 3), "stale_replica_fences": fenced, "network": "netns+veth"}


def run_once(name: str) -> dict:
    ha = name in HA_DRILLS
    if (DIR / "pg-ha").exists() != ha and DIR.exists():
        sh(CLUSTER, "down", timeout=300)  # the other kind of database
    sh(CLUSTER, "up", *(["--ha"] if ha else []), timeout=600)
    if ha:
        sh(PG_HA, "wait-healthy", DIR / "pg-ha", timeout=180)
    outcome = {"drill": name}
    extra = []
    try:
        prepare = globals().get("prepare_" + name.replace("-", "_"))
        if prepare:
            extra.append(prepare())
    except Skipped as reason:
        outcome.update({"skipped": str(reason)})
        print(json.dumps(outcome), flush=True)
        print(f"partition drill SKIPPED: {reason}", file=sys.stderr, flush=True)
        return outcome
    except Exception as error:
        outcome.update({"passed": False, "error": f"setting up: {type(error).__name__}: {error}"})
        print(json.dumps(outcome), flush=True)
        return outcome
    work = Workload(f"{name}-{uuid.uuid4().hex[:6]}")
    fences_before = fences()
    work.start()
    window = [time.time(), None]
    try:
        outcome.update(globals()["drill_" + name.replace("-", "_")](work, *extra))
        window[1] = time.time()
        work.answer()
        outcome.update(work.check())
        # Self-fences plus token-rejected writes: counted on the stale replica where there is one
        # (pause, partition); elsewhere the cluster-wide increase (restarted replicas count from 0).
        outcome["fence_actions"] = outcome.get("stale_replica_fences", max(0, fences() - fences_before))
        outcome["passed"] = outcome["lost"] == 0 and outcome["bad_sequences"] == 0 and outcome["incomplete"] == 0
        if name in ("pause", "partition") and outcome.get("stale_replica_fences", 0) <= 0:
            outcome["passed"] = False
        if "failover_s" in outcome and outcome["failover_s"] > TTL + 1:
            outcome["failover_goal_missed"] = True
        if "outage_s" in outcome and outcome["outage_s"] > {"pg-switchover": 3, "pg-crash-primary": 15}[name]:
            outcome["outage_goal_missed"] = True
    except Exception as error:  # a drill that breaks is a failed run, reported, not a crash of the runner
        import traceback
        where = [f for f in traceback.extract_tb(error.__traceback__) if "drill.py" in f.filename or "cluster.py" in f.filename][-4:]
        outcome.update({"passed": False, "error": f"{type(error).__name__}: {error}",
                        "at": [f"{frame.name}:{frame.lineno}" for frame in where]})
    finally:
        for resource in extra:
            resource.stop()
    try:
        outcome["report"] = str(report(name, work, outcome, window).relative_to(ROOT))
    except Exception as error:  # the report is an aid; a failure to draw it does not fail the drill
        outcome["report_error"] = f"{type(error).__name__}: {error}"
    print(json.dumps(outcome), flush=True)
    return outcome


REPORTS = ROOT / "deploy" / "drills" / "reports"


def report(name: str, work: Workload, outcome: dict, window: list) -> Path:
    """Writes the run's report: its outcome, the lease history of its handlers, the fault window
    and each moved handler's failover time (JSON), and the ownership timeline with the fault window
    marked (PNG, same lanes as the cluster page)."""
    ids = set(work.all)
    changes = [c for c in reversed(get(LB, "/cluster/history?limit=1000")["changes"]) if c["handler_id"] in ids]
    at = lambda c: datetime.fromisoformat(c["at"]).timestamp()
    fault_start, fault_end = window[0], window[1] or time.time()
    failovers = {c["handler_id"]: round(at(c) - fault_start, 3) for c in changes
                 if c["change"] == "failed_over" and at(c) >= fault_start}
    REPORTS.mkdir(parents=True, exist_ok=True)
    stem = REPORTS / f"{name}-{work.tag}"
    stem.with_suffix(".json").write_text(json.dumps({
        "outcome": outcome, "fault_window": [fault_start, fault_end], "failover_s_per_handler": failovers,
        "lease_history": changes}, indent=1))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    by_handler: dict[str, list[dict]] = {}
    for c in changes:
        by_handler.setdefault(c["handler_id"], []).append(c)
    lanes = sorted({c["replica"] for c in changes if c["replica"]})
    origin = min([at(c) for c in changes] + [fault_start])
    end = max([at(c) for c in changes] + [fault_end])
    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.9 * max(1, len(lanes))))
    handlers = sorted(by_handler)
    for h, hc in by_handler.items():
        for i, c in enumerate(hc):
            if c["change"] not in ("created", "claimed", "reloaded", "failed_over") or not c["replica"]:
                continue
            stop = at(hc[i + 1]) if i + 1 < len(hc) else end
            y = lanes.index(c["replica"]) + handlers.index(h) / (len(handlers) + 1) * 0.8
            ax.plot([at(c) - origin, stop - origin], [y, y], lw=2,
                    color="#c0392b" if c["change"] == "failed_over" else "#4a7ebb")
    ax.axvspan(fault_start - origin, fault_end - origin, color="#f5b7b1", alpha=0.4, label="fault and recovery")
    ax.set_yticks([i + 0.4 for i in range(len(lanes))], lanes)
    ax.set_xlabel("seconds")
    moved = f", failover median {statistics.median(failovers.values()):.2f} s" if failovers else ""
    ax.set_title(f"{name} drill ({work.tag}): {'passed' if outcome.get('passed') else 'FAILED'}{moved}")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=80)
    plt.close(fig)
    return stem.with_suffix(".png")


def table(results: list[dict]) -> str:
    lines = ["| drill | runs | passed | lost | duplicate/skipped sequences | fence actions | failover (or, for pg-*, outage) median/max (s) |",
             "|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["drill"] for r in results):
        skipped = [r for r in results if r["drill"] == name and "skipped" in r]
        if skipped:
            lines.append(f"| {name} | {len(skipped)} skipped: {skipped[0]['skipped']} | | | | | |")
        runs = [r for r in results if r["drill"] == name and "skipped" not in r]
        if not runs:
            continue
        failovers = [r["failover_s"] for r in runs if "failover_s" in r] or [r["outage_s"] for r in runs if "outage_s" in r]
        fo = f"{statistics.median(failovers):.2f} / {max(failovers):.2f}" if failovers else "—"
        lines.append(f"| {name} | {len(runs)} | {sum(r.get('passed', False) for r in runs)} | "
                     f"{sum(r.get('lost', 0) for r in runs)} | {sum(r.get('bad_sequences', 0) for r in runs)} | "
                     f"{sum(r.get('fence_actions', 0) for r in runs)} | {fo} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("drills", nargs="*", default=DRILLS,
                        help=f"which drills ({', '.join(DRILLS)}; PostgreSQL failover: {', '.join(HA_DRILLS)})")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--table", type=Path, help="write the markdown table here")
    parser.add_argument("--down", action="store_true", help="stop the cluster afterwards")
    args = parser.parse_args()
    unknown = [d for d in args.drills if d not in DRILLS + HA_DRILLS]
    if unknown:
        parser.error(f"unknown drill {unknown}; choose from {DRILLS + HA_DRILLS}")
    results = [run_once(name) for name in args.drills for _ in range(args.runs)]
    text = table(results)
    print(text)
    if args.table:
        # The last report of each drill is kept beside the table (the others stay in reports/).
        latest = args.table.parent / "reports-latest"
        latest.mkdir(exist_ok=True)
        for r in results:
            if r.get("report"):
                png = ROOT / r["report"]
                shutil.copy(png, latest / f"{r['drill']}.png")
                shutil.copy(png.with_suffix(".json"), latest / f"{r['drill']}.json")
        text += "\n\nLast run of each drill, as a report (lease history, fault window, failover per handler): " + \
            ", ".join(f"[{d}](reports-latest/{d}.png)" for d in DRILLS + HA_DRILLS if (latest / f"{d}.png").exists())
        args.table.write_text(f"Drills on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, lease TTL {TTL}s\n\n{text}\n")
    if args.down:
        sh(CLUSTER, "down")
    sys.exit(0 if all(r.get("passed") or "skipped" in r for r in results) else 1)


if __name__ == "__main__":
    main()
