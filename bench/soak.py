"""Soak: does the database (and each replica) stay bounded under churn?

Drives a steady mix through a local cluster (three replicas, HAProxy, PostgreSQL) with a short
retention: echo runs, counters, and approvals that hibernate and are answered after a reload.
Every minute it samples table and index sizes, dead tuples, each replica's RSS, open database
connections and the p99 of `run` latency in that minute, then writes bench/results/soak.json, a
table (soak.md) and the curves (soak.png). Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import threading
import time
from pathlib import Path

import httpx
from leasehold_kit.procs import sh

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "deploy" / "local-cluster"
RESULTS = ROOT / "bench" / "results"
TABLES = ["handlers", "event_log", "inbox", "lease_history", "replicas"]


class Load:
    """Clients in threads, each bounded by the soak's end time; latencies of `run` per minute."""

    def __init__(self, lb: str, end: float, clients: int):
        self.lb, self.end, self.clients = lb, end, clients
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.errors = 0
        self.ops = 0

    def take_latencies(self) -> list[float]:
        with self.lock:
            taken, self.latencies = self.latencies, []
            return taken

    def client(self, n: int):
        rng = random.Random(n)
        http = httpx.Client(base_url=self.lb, timeout=30)
        waiting: list[str] = []
        i = 0
        while time.monotonic() < self.end and i < 10_000_000:
            i += 1
            kind = rng.random()
            try:
                if kind < 0.7:
                    started = time.monotonic()
                    r = http.post("/workflows/echo/run", json={"start_event": {"message": f"soak {n} {i}"}})
                    if r.status_code == 200:
                        with self.lock:
                            self.latencies.append(time.monotonic() - started)
                    else:
                        self.errors += 1
                elif kind < 0.85:
                    http.post("/workflows/counter/run-nowait", json={"start_event": {"count_to": 20}}).raise_for_status()
                else:
                    hid = f"soak-{n}-{i}"
                    http.post("/workflows/approval/run-nowait",
                              json={"start_event": {"request": hid}, "handler_id": hid}).raise_for_status()
                    waiting.append(hid)
                # Answer approvals after they had time to hibernate (idle timeout 1 s): a reload each.
                while len(waiting) > 20:
                    hid = waiting.pop(0)
                    http.post(f"/events/{hid}", json={"event": {"type": "HumanResponseEvent",
                                                                "value": {"response": "ok"}}})
                with self.lock:
                    self.ops += 1
            except httpx.HTTPError:
                self.errors += 1
                time.sleep(0.1)
        http.close()


def psql(url: str, sql: str) -> str:
    return sh("psql", url, "-XAtq", "-c", sql, timeout=60)


def sample(url: str, directory: Path, load: Load, started: float) -> dict:
    sizes = {}
    for table in TABLES:
        row = psql(url, f"SELECT pg_table_size('{table}'), pg_indexes_size('{table}'), "
                        f"(SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = '{table}'), "
                        f"(SELECT count(*) FROM {table})").split("|")
        sizes[table] = {"table_bytes": int(row[0]), "index_bytes": int(row[1]), "dead": int(row[2] or 0),
                        "rows": int(row[3])}
    rss = {}
    for r in ("r1", "r2", "r3"):
        try:
            pid = (directory / f"{r}.pid").read_text().strip()
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss[r] = int(line.split()[1])
        except OSError:
            rss[r] = None
    latencies = sorted(load.take_latencies())
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000 if latencies else None
    upd, hot, vacuums = psql(url, "SELECT n_tup_upd, n_tup_hot_upd, autovacuum_count FROM pg_stat_user_tables "
                                  "WHERE relname = 'handlers'").split("|")
    return {"minute": round((time.monotonic() - started) / 60, 2), "sizes": sizes, "rss_kib": rss,
            "handlers_updates": int(upd), "handlers_hot_updates": int(hot), "handlers_autovacuums": int(vacuums),
            "load_average": round(os.getloadavg()[0], 2),
            "connections": int(psql(url, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")),
            "runs": len(latencies), "p99_ms": round(p99, 2) if p99 else None,
            "p50_ms": round(statistics.median(latencies) * 1000, 2) if latencies else None,
            "ops": load.ops, "errors": load.errors}


def plot(samples: list[dict], path: Path, title: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    minutes = [s["minute"] for s in samples]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0][0]
    for table in TABLES[:4]:
        ax.plot(minutes, [(s["sizes"][table]["table_bytes"] + s["sizes"][table]["index_bytes"]) / 2**20 for s in samples],
                label=table)
    ax.set_title("table + index size (MiB)"); ax.legend(); ax.set_xlabel("minute")
    ax = axes[0][1]
    for table in TABLES[:4]:
        ax.plot(minutes, [s["sizes"][table]["rows"] for s in samples], label=table)
    ax.set_title("live rows"); ax.legend(); ax.set_xlabel("minute")
    ax = axes[1][0]
    for r in ("r1", "r2", "r3"):
        ax.plot(minutes, [(s["rss_kib"].get(r) or 0) / 1024 for s in samples], label=r)
    ax.set_title("replica RSS (MiB)"); ax.legend(); ax.set_xlabel("minute")
    ax = axes[1][1]
    ax.plot(minutes, [s["p99_ms"] or 0 for s in samples], label="run p99")
    ax.plot(minutes, [s["p50_ms"] or 0 for s in samples], label="run p50")
    ax.set_title("echo run latency (ms)"); ax.legend(); ax.set_xlabel("minute")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--retention", default="30s")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--sample-seconds", type=float, default=60)
    parser.add_argument("--name", default="soak", help="results file prefix in bench/results (default soak)")
    args = parser.parse_args()
    if not (0 < args.minutes <= 24 * 60) or not (1 <= args.clients <= 64):
        parser.error("--minutes must be in (0, 1440] and --clients in [1, 64]")
    directory = Path(os.environ.setdefault("LH_DIR", "/tmp/leasehold-soak"))
    os.environ.setdefault("LH_PORT", "8380")
    os.environ.setdefault("LH_BASE_PORT", "8381")
    os.environ.setdefault("LH_IDLE_TIMEOUT", "1s")
    os.environ["LEASEHOLD_RETENTION"] = args.retention
    sh(CLUSTER, "up", timeout=300)
    try:
        url = (directory / "pg.url").read_text().strip()
        lb = f"http://127.0.0.1:{os.environ['LH_PORT']}"
        started = time.monotonic()
        end = started + args.minutes * 60
        load = Load(lb, end, args.clients)
        threads = [threading.Thread(target=load.client, args=(n,), daemon=True) for n in range(args.clients)]
        for t in threads:
            t.start()
        samples = []
        while time.monotonic() < end:
            time.sleep(min(args.sample_seconds, max(0.0, end - time.monotonic())))
            samples.append(sample(url, directory, load, started))
            print(json.dumps(samples[-1]), flush=True)
        for t in threads:
            t.join(timeout=60)
    finally:
        sh(CLUSTER, "down", timeout=120, check=False)
    RESULTS.mkdir(parents=True, exist_ok=True)
    title = (f"soak {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {args.minutes:g} min, "
             f"retention {args.retention}, {args.clients} clients")
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"title": title, "samples": samples}, indent=1))
    plot(samples, RESULTS / f"{args.name}.png", title)
    first, last = samples[min(2, len(samples) - 1)], samples[-1]
    lines = [title, "", "| figure | after warm-up (minute %.0f) | at the end (minute %.0f) |" % (first["minute"], last["minute"]),
             "|---|---|---|"]
    for table in TABLES[:4]:
        for key, name in (("table_bytes", "size"), ("index_bytes", "index size"), ("rows", "rows"), ("dead", "dead tuples")):
            a, b = first["sizes"][table][key], last["sizes"][table][key]
            unit = " KiB" if "bytes" in key else ""
            scale = 1024 if "bytes" in key else 1
            lines.append(f"| {table} {name} | {a // scale}{unit} | {b // scale}{unit} |")
    for r in ("r1", "r2", "r3"):
        lines.append(f"| {r} RSS | {(first['rss_kib'].get(r) or 0) // 1024} MiB | {(last['rss_kib'].get(r) or 0) // 1024} MiB |")
    lines.append(f"| database connections | {first['connections']} | {last['connections']} |")
    hot = lambda s: f"{100 * s['handlers_hot_updates'] / max(1, s['handlers_updates']):.0f} %"
    lines.append(f"| handlers updates that were HOT (cumulative) | {hot(first)} | {hot(last)} |")
    # Since warm-up: HOT share of the updates and autovacuum runs of `handlers` between the two samples.
    updates = last["handlers_updates"] - first["handlers_updates"]
    lines.append(f"| handlers updates HOT since warm-up | | "
                 f"{100 * (last['handlers_hot_updates'] - first['handlers_hot_updates']) / max(1, updates):.0f} % "
                 f"of {updates} |")
    lines.append(f"| handlers autovacuum runs since warm-up | | "
                 f"{last['handlers_autovacuums'] - first['handlers_autovacuums']} |")
    # Drift: the median of the per-minute figures early (after warm-up) against late.
    # A last sample taken less than half a period after the one before covers a partial minute.
    whole = samples[:-1] if len(samples) > 3 and (samples[-1]["minute"] - samples[-2]["minute"]) * 60 < args.sample_seconds / 2 else samples
    steady = whole[min(2, len(whole) - 1):]
    third = max(1, len(steady) // 3)
    early, late = steady[:third], steady[-third:]
    median = lambda rows, key: statistics.median([r[key] for r in rows if r.get(key) is not None] or [0])
    lines.append(f"| echo run p99, median of per-minute p99 (first / last third) | {median(early, 'p99_ms')} ms "
                 f"| {median(late, 'p99_ms')} ms |")
    lines.append(f"| echo runs per minute, median (first / last third) | {median(early, 'runs'):.0f} "
                 f"| {median(late, 'runs'):.0f} |")
    lines.append(f"| load average (1 min), median (first / last third) | {median(early, 'load_average')} "
                 f"| {median(late, 'load_average')} |")
    lines.append(f"| echo run p50 / p99 | {first['p50_ms']} / {first['p99_ms']} ms | {last['p50_ms']} / {last['p99_ms']} ms |")
    lines.append(f"| operations (total), errors | {first['ops']}, {first['errors']} | {last['ops']}, {last['errors']} |")
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
