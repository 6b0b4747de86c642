#!/usr/bin/env python3
"""Benchmarks, side by side in one run on this machine: Leasehold (release build) and the
Python llama-agents-server (PyPI) on the same PostgreSQL, plus the store's claim statement
against itself sent raw. Writes bench/results/latest.json and latest.md. Loopback only; every
load is bounded in time and count.

    bench/run                 everything
    bench/run --quick         shorter loads (smoke)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from hdrh.histogram import HdrHistogram
from leasehold_kit.procs import free_port
from leasehold_kit.reload import Sender, event_to_first_stream_event
from leasehold_kit.replicas import launch

ROOT = Path(__file__).resolve().parents[1]
DIST = ROOT / "dist"
PG = ROOT / "scripts" / "pg"
PY = Path(os.environ.get("LH_BENCH_PYTHON", ROOT / "bench" / ".venv-py" / "bin" / "python"))
RESULTS = ROOT / "bench" / "results"


def sh(*args, timeout=600, **kw) -> str:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True, timeout=timeout, **kw).stdout


def wait_http(url: str, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


class Proc:
    """A process of the run, its output in results/raw/LOG (written anew)."""

    def __init__(self, p: subprocess.Popen):
        self.p = p

    @classmethod
    def start(cls, args, log="proc.log") -> "Proc":
        with open(RESULTS / "raw" / log, "wb") as out:
            return cls(subprocess.Popen([str(a) for a in args], stdout=out, stderr=out))

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.p.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.p.kill()


def database(admin: str, name: str) -> str:
    sh("psql", admin, "-XAtqc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    sh("psql", admin, "-XAtqc", f"CREATE DATABASE {name}")
    return admin.rsplit("/", 1)[0] + "/" + name


def leasehold(db: str | None, port: int, idle="off", replica="b1", log=None, extra=()) -> Proc:
    store = ["--database-url", db] if db else []
    p = Proc(launch(RESULTS / "raw" / (log or f"leasehold-{port}.log"),
                    args=["--port", port, *store, "--replica-id", replica, "--idle-timeout", idle,
                          "--log-level", "warning", *extra], binary=str(DIST / "leasehold"), truncate=True))
    wait_http(f"http://127.0.0.1:{port}/ready")
    return p


def python_server(db: str, port: int, idle=60.0) -> Proc:
    p = Proc.start([PY, ROOT / "bench" / "python_server.py", port, db, idle], log=f"python-{port}.log")
    wait_http(f"http://127.0.0.1:{port}/workflows")
    return p


def wrk(url: str, script: str, seconds: int, connections=64) -> dict:
    out = sh("wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", ROOT / "bench" / script, url,
             timeout=seconds + 60)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    def pct(p):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": round(rps, 1), "p50_ms": round(pct(50), 2), "p99_ms": round(pct(99), 2),
            "non_2xx": int(errors.group(1)) if errors else 0}


def counter_events_per_s(url: str, ticks: int) -> dict:
    started = time.monotonic()
    r = httpx.post(f"{url}/workflows/counter/run", json={"start_event": {"count_to": ticks}}, timeout=900)
    elapsed = time.monotonic() - started
    assert r.status_code == 200, r.text[:300]
    return {"ticks": ticks, "seconds": round(elapsed, 3), "ticks_per_s": round(ticks / elapsed, 1)}


def reload_latency(url: str, count: int, hibernated) -> dict:
    ids = []
    for i in range(count):
        r = httpx.post(f"{url}/workflows/approval/run-nowait", json={"start_event": {"request": f"r{i}"}}, timeout=10)
        ids.append(r.json()["handler_id"])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all(hibernated(url, h) for h in ids):
        time.sleep(0.2)
    histogram = HdrHistogram(1, 60_000_000, 3)  # microseconds, 1 µs .. 60 s, 3 significant digits
    sender = Sender(url)  # one kept-alive connection: no connect in the figure
    missed = 0
    try:
        for h in ids:
            got = event_to_first_stream_event(
                url, h, {"type": "HumanResponseEvent", "value": {"response": "yes"}}, sender)
            assert got["post_status"] in (200, 202), got
            if got["seconds"] is None:  # counted at the 30 s it waited: a miss weighs in the figure
                missed += 1
            seconds = 30.0 if got["seconds"] is None else got["seconds"]
            histogram.record_value(min(60_000_000, max(1, int(seconds * 1e6))))
    finally:
        sender.close()
    return {"count": count, "p50_ms": round(histogram.get_value_at_percentile(50) / 1000, 2),
            "p99_ms": round(histogram.get_value_at_percentile(99) / 1000, 2),
            "max_ms": round(histogram.get_max_value() / 1000, 2), "missed": missed}


def process_ticks() -> dict[str, int]:
    """utime+stime of every running process, summed by command name."""
    totals: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        totals[name] = totals.get(name, 0) + int(fields[11]) + int(fields[12])
    return totals


def cpu_ticks() -> dict[str, float]:
    """CPU seconds of every process on the machine, summed by command name, plus this driver's
    finished children (wrk has exited by the time the load is over)."""
    hz = os.sysconf("SC_CLK_TCK")
    totals = {name: ticks / hz for name, ticks in process_ticks().items()}
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    totals["wrk"] = children.ru_utime + children.ru_stime
    return totals


def cores_used(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    used = {name: (after[name] - before.get(name, 0)) / seconds for name in after}
    return {name: round(used.get(name, 0.0), 2) for name in ("leasehold", "postgres", "wrk", "haproxy")}


def haproxy(port: int, replicas: list[int]) -> Proc:
    """The deploy/haproxy.cfg load balancer, with loopback addresses (as deploy/local-cluster)."""
    config = (ROOT / "deploy" / "haproxy.cfg").read_text().replace("bind *:8080", f"bind 127.0.0.1:{port}")
    lines = [line for line in config.splitlines() if not line.strip().startswith("server ")]
    lines += [f"    server r{i + 1} 127.0.0.1:{p} check" for i, p in enumerate(replicas)]
    path = RESULTS / "raw" / f"haproxy-{port}.cfg"
    path.write_text("\n".join(lines) + "\n")
    p = Proc.start(["haproxy", "-db", "-f", path], log=f"haproxy-{port}.log")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # every replica in rotation (each /ready checked)
        ok = 0
        for _ in range(len(replicas) * 2):
            try:
                ok += httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).json()["replica_id"] is not None
            except (httpx.HTTPError, ValueError, KeyError):
                pass
        if ok == len(replicas) * 2:
            break
        time.sleep(0.2)
    return p


def scaling(admin: str, seconds: int, quick: bool) -> list[dict]:
    """Throughput with 1, 2 and 3 replicas behind HAProxy on one Postgres: echo runs (64 connections)
    and concurrent counters, with the cores each kind of process used during the echo load."""
    rows = []
    for n in (1, 2, 3):
        db = database(admin, f"scale{n}")
        ports = [free_port() for _ in range(n)]
        procs = [leasehold(db, port, replica=f"s{n}-r{i + 1}") for i, port in enumerate(ports)]
        lb_port = free_port()
        procs.append(haproxy(lb_port, ports))
        url = f"http://127.0.0.1:{lb_port}"
        try:
            wrk(f"{url}/workflows/echo/run", "echo.lua", 2)  # warm-up
            before, started = cpu_ticks(), time.monotonic()
            echo = wrk(f"{url}/workflows/echo/run", "echo.lua", seconds)
            cores = cores_used(before, cpu_ticks(), time.monotonic() - started)
            counters, ticks = (16, 200) if quick else (32, 500)
            started = time.monotonic()
            ids = [post_json(f"{url}/workflows/counter/run-nowait", {"start_event": {"count_to": ticks}})["handler_id"]
                   for _ in range(counters)]
            deadline = time.monotonic() + 300
            pending = set(ids)
            while pending and time.monotonic() < deadline:
                pending = {h for h in pending
                           if httpx.get(f"{url}/handlers/{h}", timeout=10).json()["status"] == "running"}
                time.sleep(0.05)
            elapsed = time.monotonic() - started
            rows.append({"replicas": n, "echo": echo, "cores_during_echo": cores,
                         "counter": {"handlers": counters, "ticks_each": ticks, "finished": len(ids) - len(pending),
                                     "ticks_per_s": round(counters * ticks / elapsed, 1)}})
            print(json.dumps({"scaling": rows[-1]}), flush=True)
        finally:
            for p in procs:
                p.stop()
    return rows


def post_json(url: str, body: dict) -> dict:
    r = httpx.post(url, json=body, timeout=30)
    assert r.status_code == 200, r.text[:300]
    return r.json()


def failover(runs: int) -> dict:
    """kill -9 of the busiest replica in deploy/local-cluster (release binary, lease TTL 2 s), through
    the kill9 drill: seconds until every handler it owned logged a new event on another replica."""
    env = dict(os.environ, LH_DIR=str(RESULTS / "raw" / "cluster"), LH_PORT=str(free_port()),
               LH_BASE_PORT=str(free_port_run(3)), LH_LEASE_TTL="2s", LH_BIN=str(DIST / "leasehold"))
    try:
        done = subprocess.run([ROOT / "deploy" / "drills" / "run", "kill9", "--runs", str(runs)], env=env,
                              capture_output=True, text=True, timeout=120 + 60 * runs)
    finally:
        subprocess.run([ROOT / "deploy" / "local-cluster", "down"], env=env, capture_output=True, timeout=120)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    times = sorted(line["failover_s"] for line in lines if "failover_s" in line)
    return {"runs": len(lines), "passed": sum(bool(line.get("passed")) for line in lines), "ttl_s": 2.0,
            "median_s": round(statistics.median(times), 3) if times else None,
            "max_s": max(times) if times else None,
            "lost": sum(line.get("lost", 0) for line in lines)}


def free_port_run(count: int) -> int:
    """The first of `count` consecutive free loopback ports."""
    for _ in range(100):
        base = free_port()
        try:
            sockets = []
            for port in range(base, base + count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no run of free ports")


# Completed echo runs in the Python server's store (its migration 0001: table wf_handlers).
PYTHON_DONE_SQL = "SELECT count(*) FROM wf_handlers WHERE status = 'completed'"


def db_counters(admin: str, db: str) -> dict:
    """Commits, and statements by text, of one database so far."""
    rows = sh("psql", admin, "-XAtF", "\t", "-c",
              "SELECT s.calls, regexp_replace(left(s.query, 70), '\\s+', ' ', 'g') FROM pg_stat_statements s "
              f"JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = '{db}'")
    statements: dict[str, int] = {}
    for line in rows.splitlines():
        calls, text = line.split("\t", 1)
        statements[text] = statements.get(text, 0) + int(calls)
    commits = int(sh("psql", admin, "-XAtc", f"SELECT xact_commit FROM pg_stat_database WHERE datname = '{db}'").strip())
    return {"commits": commits, "statements": statements}


def per_request(admin: str, db: str, url: str, script: str, seconds: int, count_sql: str) -> dict:
    """One wrk round with what it cost Postgres: statements and commits per completed request
    (pg_stat_statements, pg_stat_database), and CPU seconds per request of the server and of
    Postgres."""
    sh("psql", admin, "-XAtqc", "SELECT pg_stat_statements_reset()")
    before = db_counters(admin, db)
    done_before = int(sh("psql", admin.rsplit("/", 1)[0] + "/" + db, "-XAtc", count_sql).strip())
    cpu_before = cpu_ticks()
    load = wrk(url, script, seconds)
    cpu_after = cpu_ticks()
    after = db_counters(admin, db)
    done = int(sh("psql", admin.rsplit("/", 1)[0] + "/" + db, "-XAtc", count_sql).strip()) - done_before
    calls = {text: n - before["statements"].get(text, 0) for text, n in after["statements"].items()}
    top = sorted(((n, text) for text, n in calls.items() if n > 0), reverse=True)[:6]
    def cpu(name):
        return (cpu_after.get(name, 0) - cpu_before.get(name, 0)) / max(1, done)
    server_cpu = cpu("leasehold") + sum(cpu(n) for n in cpu_after if n.startswith("python"))
    return {"load": load, "requests_done": done,
            "statements_per_request": round(sum(calls.values()) / max(1, done), 2),
            "commits_per_request": round((after["commits"] - before["commits"]) / max(1, done), 2),
            "server_cpu_ms_per_request": round(server_cpu * 1000, 3),
            "postgres_cpu_ms_per_request": round(cpu("postgres") * 1000, 3),
            "top_statements_per_request": [[round(n / max(1, done), 2), text] for n, text in top]}


GROUP_COMMIT_SETTINGS = [("off (each write commits alone)", ["--batch-max", "off"]),
                         ("1 writer", ["--batch-writers", "1"]),
                         ("2 writers (default)", []),
                         ("4 writers", ["--batch-writers", "4"]),
                         ("2 writers, linger 2 ms", ["--batch-linger", "2ms"])]


def group_commit(admin: str, seconds: int) -> list[dict]:
    """echo `run` at 64 connections under each group commit setting: what picks the defaults."""
    rows = []
    for index, (label, extra) in enumerate(GROUP_COMMIT_SETTINGS):
        name, port = f"lhgc{index}", free_port()
        p = leasehold(database(admin, name), port, extra=extra)
        try:
            cost = per_request(admin, name, f"http://127.0.0.1:{port}/workflows/echo/run", "echo.lua", seconds,
                               "SELECT count(*) FROM handlers WHERE status = 'completed'")
        finally:
            p.stop()
        rows.append({"setting": label, "flags": " ".join(extra), **cost})
        print(json.dumps({"group_commit": rows[-1]}), flush=True)
    return rows


def commit_limit(admin: str, seconds: int) -> dict:
    """What this Postgres commits per second: one-row INSERT transactions from pgbench with 8 and
    64 clients (the same durable settings as the servers)."""
    url = database(admin, "commitlimit")
    sh("psql", url, "-XAtqc", "CREATE TABLE t (id bigserial PRIMARY KEY, v int)")
    script = RESULTS / "raw" / "insert.sql"
    script.write_text("INSERT INTO t (v) VALUES (1);\n")
    pgbench = next(Path("/usr/lib/postgresql").glob("*/bin/pgbench"))
    result = {}
    for clients in (8, 64):
        out = sh(pgbench, "-n", "-c", clients, "-j", 2, "-T", seconds, "-f", script, url, timeout=seconds + 60)
        tps = float(re.search(r"tps = ([\d.]+)", out).group(1))
        latency = float(re.search(r"latency average = ([\d.]+) ms", out).group(1))
        result[f"clients_{clients}"] = {"tps": round(tps), "latency_ms": latency}
    return result


def python_memory(admin: str, port: int, count: int) -> dict:
    """The Python server's resident memory per handler after its idle release (idle_timeout 0.3 s)."""
    py = python_server(database(admin, "pymemory"), port, idle=0.3)
    url = f"http://127.0.0.1:{port}"
    try:
        for i in range(20):  # warm up
            post_json(f"{url}/workflows/echo/run", {"start_event": {"message": f"w{i}"}})
        time.sleep(2)
        before = py.rss_kib()
        for i in range(count):
            post_json(f"{url}/workflows/approval/run-nowait", {"start_event": {"request": f"m{i}"}})
        time.sleep(5)  # well past the idle timeout: every approval is released
        after = py.rss_kib()
        return {"handlers": count, "rss_before_kib": before, "rss_after_kib": after,
                "bytes_per_handler": round((after - before) * 1024 / count, 1)}
    finally:
        py.stop()


def wait_hibernated(url: str, deadline: float):
    """Until nothing runs (every approval hibernated), or the deadline."""
    while time.monotonic() < deadline:
        counts = httpx.get(f"{url}/cluster", timeout=10).json()
        if counts["handlers"]["running"] == 0 and counts["live_here"] == 0:
            return
        time.sleep(1)


def leasehold_hibernated(url, h) -> bool:
    return httpx.get(f"{url}/cluster/handlers/{h}", timeout=5).json()["hibernated"]


def leasehold_memory(admin: str, port: int, count: int, procs: list) -> dict:
    """Leasehold's resident memory per hibernated handler: RSS before and after `count` approvals
    were started and hibernated (idle timeout 1 s), over how many hibernated."""
    url = f"http://127.0.0.1:{port}"
    lh = leasehold(database(admin, "lhmemory"), port, idle="1s")
    procs.append(lh)
    try:
        # Warm up pools, caches and the allocator's high-water mark: echo runs, then one wave of
        # approvals hibernated (many are live at once during a wave; glibc keeps that peak, which
        # is not the cost of a hibernated handler).
        wrk(f"{url}/workflows/echo/run", "echo.lua", 3)
        wrk(f"{url}/workflows/approval/run-nowait", "approval.lua", 5)
        wait_hibernated(url, time.monotonic() + 120)
        time.sleep(3)
        before = lh.rss_kib()
        warm = httpx.get(f"{url}/cluster", timeout=10).json()["handlers"]["hibernated"]
        target = warm + count
        created = 0
        deadline = time.monotonic() + 600
        while created < target and time.monotonic() < deadline:
            wrk(f"{url}/workflows/approval/run-nowait", "approval.lua", 5)
            created = httpx.get(f"{url}/cluster", timeout=10).json()["handlers"]
            created = created["running"] + created["hibernated"]
        wait_hibernated(url, deadline)
        time.sleep(3)
        after = lh.rss_kib()
        hibernated = httpx.get(f"{url}/cluster", timeout=10).json()["handlers"]["hibernated"] - warm
        return {"hibernated": hibernated, "warm_up_hibernated": warm, "rss_before_kib": before,
                "rss_after_kib": after, "bytes_per_hibernated": round((after - before) * 1024 / max(1, hibernated), 1)}
    finally:
        lh.stop()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--hibernated", type=int, default=100_000)
    parser.add_argument("--group-commit-only", action="store_true",
                        help="only the group commit settings and the commit ceiling (prints, writes nothing)")
    parser.add_argument("--memory-only", action="store_true",
                        help="only Leasehold's memory per hibernated handler (prints, writes nothing)")
    args = parser.parse_args()
    seconds = 5 if args.quick else 10
    (RESULTS / "raw").mkdir(parents=True, exist_ok=True)
    pgdir = RESULTS / "raw" / "pg"
    sh(PG, "destroy", pgdir)
    admin = sh(PG, "start", pgdir, "--durable").strip()
    sh("psql", admin, "-XAtqc", "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "machine": {"cores": os.cpu_count(), "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                           "kernel": platform.release(),
                           "postgres": sh("psql", admin, "-XAtc", "show server_version").strip(),
                           "postgres_settings": "fsync on, synchronous_commit on (durable)"}}
    procs = []
    if args.memory_only:
        try:
            print(json.dumps(leasehold_memory(admin, free_port(), args.hibernated, procs)), flush=True)
        finally:
            for proc in procs:
                proc.stop()
            sh(PG, "destroy", pgdir)
        return
    if args.group_commit_only:
        try:
            gc = {"group_commit": group_commit(admin, seconds), "commit_limit": commit_limit(admin, seconds)}
            print("\n".join(group_commit_lines(gc)))
        finally:
            sh(PG, "destroy", pgdir)
        return
    try:
        # 1. The store: claims through PostgresStore vs the same statement raw; one renew of 10k leases.
        results["store"] = json.loads(sh(DIST / "leasehold-bench", "store", "--database-url", database(admin, "storebench"),
                                         "--handlers", 10_000 if args.quick else 20_000, "--repeats", 3).strip().splitlines()[-1])
        print(json.dumps({"store": results["store"]}), flush=True)

        # 2. HTTP: run of echo, 64 connections; counter events/s; both servers on Postgres.
        lh_port, py_port = free_port(), free_port()
        lh = leasehold(database(admin, "lhbench"), lh_port)
        py = python_server(database(admin, "pybench"), py_port)
        procs += [lh, py]
        lh_url, py_url = f"http://127.0.0.1:{lh_port}", f"http://127.0.0.1:{py_port}"
        lh_cost = per_request(admin, "lhbench", f"{lh_url}/workflows/echo/run", "echo.lua", seconds,
                              "SELECT count(*) FROM handlers WHERE status = 'completed'")
        py_cost = per_request(admin, "pybench", f"{py_url}/workflows/echo/run", "echo.lua", seconds,
                              PYTHON_DONE_SQL)
        results["echo_run"] = {"leasehold": lh_cost.pop("load"), "python": py_cost.pop("load")}
        results["echo_cost"] = {"leasehold": lh_cost, "python": py_cost}
        print(json.dumps({"echo_run": results["echo_run"], "echo_cost": results["echo_cost"]}), flush=True)
        # run-nowait: handlers started per second (answered once the creation is durable), 32 connections.
        results["run_nowait"] = {
            "leasehold": wrk(f"{lh_url}/workflows/echo/run-nowait", "echo.lua", seconds, connections=32),
            "python": wrk(f"{py_url}/workflows/echo/run-nowait", "echo.lua", seconds, connections=32)}
        print(json.dumps({"run_nowait": results["run_nowait"]}), flush=True)
        ticks = 2_000 if args.quick else 10_000
        results["counter"] = {"leasehold": counter_events_per_s(lh_url, ticks),
                              "python": counter_events_per_s(py_url, min(ticks, 2_000))}
        print(json.dumps({"counter": results["counter"]}), flush=True)
        lh.stop()
        py.stop()
        results["group_commit"] = group_commit(admin, seconds)
        mem = leasehold(None, lh_port)
        procs.append(mem)
        results["in_memory"] = {"echo_run": wrk(f"{lh_url}/workflows/echo/run", "echo.lua", seconds),
                                "counter": counter_events_per_s(lh_url, ticks)}
        print(json.dumps({"in_memory": results["in_memory"]}), flush=True)
        mem.stop()

        # 3. Reload latency: event to a hibernated approval → first new stream event.
        lh = leasehold(database(admin, "lhreload"), lh_port, idle="300ms")
        py = python_server(database(admin, "pyreload"), py_port, idle=0.3)
        procs += [lh, py]
        count = 30 if args.quick else 100
        results["reload"] = {"leasehold": reload_latency(lh_url, count, leasehold_hibernated)}
        time.sleep(1.0)
        results["reload"]["python"] = reload_latency(py_url, count, lambda url, h: True)
        results["reload"]["python"]["note"] = "idle_timeout=0.3s; waited 0.3s+ before sending (no hibernation flag in its API)"
        print(json.dumps({"reload": results["reload"]}), flush=True)
        lh.stop()
        py.stop()

        # 4. Resident memory per hibernated handler.
        results["memory"] = leasehold_memory(admin, lh_port, 20_000 if args.quick else args.hibernated, procs)
        results["memory"]["python"] = python_memory(admin, py_port, 1_000 if args.quick else 5_000)
        print(json.dumps({"memory": results["memory"]}), flush=True)

        # 5. Throughput with 1, 2 and 3 replicas; 6. failover after kill -9 (10 runs).
        results["scaling"] = scaling(admin, seconds, args.quick)
        results["failover"] = failover(3 if args.quick else 10)
        print(json.dumps({"failover": results["failover"]}), flush=True)

        # 7. The ceiling: single-row commits/s of this Postgres.
        results["commit_limit"] = commit_limit(admin, seconds)
        print(json.dumps({"commit_limit": results["commit_limit"]}), flush=True)
    finally:
        for p in procs:
            p.stop()
        sh(PG, "destroy", pgdir)
    drills = ROOT / "deploy" / "drills" / "results.md"
    results["drills_table"] = drills.read_text() if drills.exists() else None
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "latest.md").write_text(markdown(results))
    print(markdown(results))


def markdown(r: dict) -> str:
    m = r["machine"]
    s, e, c, rl, mem = r["store"], r["echo_run"], r["counter"], r["reload"], r["memory"]
    pymem, fo = mem["python"], r["failover"]
    def ratio(a, b):
        return f"{a / b:.1f}×" if b else "—"
    lines = [f"Measured {r['date']} on {m['cores']} cores, {m['memory_gib']} GiB, PostgreSQL {m['postgres']} ({m['postgres_settings']}), loopback.",
             "",
             "| figure | Leasehold | compared with | ratio | goal |",
             "|---|---|---|---|---|",
             f"| lease claims/s through the store (batch {s['claim_batch']}, {s['claimers']} claimers) | {s['claims_per_s_store']:.0f} | raw statement {s['claims_per_s_raw']:.0f} | {s['claims_ratio']:.2f} | ≥ 0.5 |",
             f"| one renew of {s['leases_renewed']} leases | {s['renew_ms_median']} ms (best {s['renew_ms_best']}) | — | — | ≤ 20 ms |",
             f"| `run` of echo, 64 connections, requests/s | {e['leasehold']['rps']} (p50 {e['leasehold']['p50_ms']} ms, p99 {e['leasehold']['p99_ms']} ms) | Python {e['python']['rps']} (p99 {e['python']['p99_ms']} ms) | {ratio(e['leasehold']['rps'], e['python']['rps'])} | ≥ 10× and ≥ 3000/s, p99 ≤ 50 ms |",
             *([f"| `run-nowait` of echo, 32 connections, starts/s | {n['leasehold']['rps']} (p50 {n['leasehold']['p50_ms']} ms, p99 {n['leasehold']['p99_ms']} ms) | Python {n['python']['rps']} (p99 {n['python']['p99_ms']} ms) | {ratio(n['leasehold']['rps'], n['python']['rps'])} | ≥ 10× |"]
               if (n := r.get("run_nowait")) else []),
             f"| counter ticks/s (one replica, Postgres) | {c['leasehold']['ticks_per_s']} ({c['leasehold']['ticks']} ticks) | Python {c['python']['ticks_per_s']} ({c['python']['ticks']} ticks) | {ratio(c['leasehold']['ticks_per_s'], c['python']['ticks_per_s'])} | ≥ 25× |",
             f"| reload latency p50/p99 (hibernated approval → first stream event) | {rl['leasehold']['p50_ms']} / {rl['leasehold']['p99_ms']} ms | Python {rl['python']['p50_ms']} / {rl['python']['p99_ms']} ms | {ratio(rl['python']['p99_ms'], rl['leasehold']['p99_ms'])} faster at p99 | p99 ≤ 3 ms, ≥ 10× |",
             f"| in-memory store (one process): echo requests/s, counter ticks/s | {r['in_memory']['echo_run']['rps']} (p99 {r['in_memory']['echo_run']['p99_ms']} ms), {r['in_memory']['counter']['ticks_per_s']} | — | — | — |",
             f"| resident memory per hibernated handler | {mem['bytes_per_hibernated']} B ({mem['hibernated']} hibernated, RSS {mem['rss_before_kib']} → {mem['rss_after_kib']} KiB) | Python {pymem['bytes_per_handler']} B per idle-released handler ({pymem['handlers']}) | — | ≤ 200 B |",
             f"| failover, kill -9 → first event of a moved handler ({fo['runs']} runs, {fo['passed']} passed, {fo['lost']} lost) | median {fo['median_s']} s, max {fo['max_s']} s | lease TTL {fo['ttl_s']} s | — | ≤ TTL + 1 s |",
             "",
             *cost_lines(r),
             "",
             *group_commit_lines(r),
             "",
             "Throughput with 1, 2 and 3 replicas behind HAProxy on one Postgres (echo: 64 connections; counters: concurrent `counter` handlers), and the cores each kind of process used during the echo load:",
             "",
             "| replicas | echo requests/s | echo p99 | counter ticks/s | cores: leasehold / postgres / haproxy / wrk |",
             "|---|---|---|---|---|"]
    for row in r["scaling"]:
        c = row["cores_during_echo"]
        lines.append(f"| {row['replicas']} | {row['echo']['rps']} | {row['echo']['p99_ms']} ms | {row['counter']['ticks_per_s']} ({row['counter']['handlers']} × {row['counter']['ticks_each']}) | "
                     f"{c['leasehold']} / {c['postgres']} / {c['haproxy']} / {c['wrk']} |")
    lines.append("")
    if r.get("drills_table"):
        lines += ["Failover drills (deploy/drills/all):", "", r["drills_table"]]
    return "\n".join(lines) + "\n"


def cost_lines(r: dict) -> list[str]:
    """Where the time of an echo `run` goes, and what this Postgres can commit at all."""
    cost, limit = r.get("echo_cost"), r.get("commit_limit")
    if not cost:
        return []
    lines = ["What one echo `run` costs (during the 64-connection round above; pg_stat_statements, pg_stat_database, /proc):",
             "",
             "| server | statements | commits | server CPU | Postgres CPU | top statements per run |",
             "|---|---|---|---|---|---|"]
    for name in ("leasehold", "python"):
        c = cost[name]
        top = "; ".join(f"{n}× `{text.strip()[:40]}`" for n, text in c["top_statements_per_request"][:4])
        lines.append(f"| {name} | {c['statements_per_request']} | {c['commits_per_request']} | "
                     f"{c['server_cpu_ms_per_request']} ms | {c['postgres_cpu_ms_per_request']} ms | {top} |")
    if limit:
        lines += ["", "The ceiling: one-row INSERT commits/s of the same Postgres (pgbench): "
                  f"{limit['clients_8']['tps']} with 8 clients ({limit['clients_8']['latency_ms']} ms each), "
                  f"{limit['clients_64']['tps']} with 64 ({limit['clients_64']['latency_ms']} ms)."]
    return lines


def group_commit_lines(r: dict) -> list[str]:
    rows = r.get("group_commit")
    if not rows:
        return []
    lines = ["Group commit settings (one replica, echo `run`, 64 connections; statements and commits per completed run):",
             "",
             "| setting | requests/s | p50 | p99 | commits per run | statements per run | Leasehold CPU per run | Postgres CPU per run |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        load = row["load"]
        lines.append(f"| {row['setting']} | {load['rps']} | {load['p50_ms']} ms | {load['p99_ms']} ms | "
                     f"{row['commits_per_request']} | {row['statements_per_request']} | "
                     f"{row['server_cpu_ms_per_request']} ms | {row['postgres_cpu_ms_per_request']} ms |")
    limit = r.get("commit_limit")
    if limit:
        lines += ["", f"Ceiling (pgbench one-row commits/s): {limit['clients_8']['tps']} at 8 clients, "
                  f"{limit['clients_64']['tps']} at 64."]
    return lines


if __name__ == "__main__":
    main()
