#!/usr/bin/env python3
"""A/B of two release builds on one durable PostgreSQL, the builds alternating round by round
(so machine drift hits both). Loads (`--loads`, default all three):

- echo: `run` of echo at 64 connections, with what each run costs (statements and commits from
  pg_stat_statements / pg_stat_database, CPU of the server and of Postgres);
- starts: `run-nowait` of echo at 32 connections (answered once the creation is durable);
- reload: an event to a hibernated approval until its first new stream event, 100 in sequence.

Loopback only; every load is bounded in time.

    .venv/bin/python bench/ab.py BASE_DIST NEW_DIST [--rounds 8] [--seconds 15] [--loads echo,starts,reload]

A DIST is a directory like dist/ (scripts/build-release DIR): the `leasehold` binary and its
resource bundles. Prints one JSON line per round and load, then a markdown table per load with
every round's figure, the median and the spread (max - min) / median.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import run as bench  # bench/run.py: the shared load and cost helpers


LOADS = ("echo", "starts", "reload")


def measure(load: str, admin: str, database: str, seconds: int) -> dict:
    """One load against one fresh server of the current `bench.DIST`."""
    port = bench.free_port()
    url = f"http://127.0.0.1:{port}"
    if load == "reload":
        server = bench.leasehold(bench.database(admin, database), port, idle="300ms")
        try:
            return bench.reload_latency(url, 100, bench.leasehold_hibernated)
        finally:
            server.stop()
    server = bench.leasehold(bench.database(admin, database), port)
    try:
        if load == "starts":
            bench.wrk(f"{url}/workflows/echo/run-nowait", "echo.lua", 2, connections=32)  # warm-up
            return bench.wrk(f"{url}/workflows/echo/run-nowait", "echo.lua", seconds, connections=32)
        bench.wrk(f"{url}/workflows/echo/run", "echo.lua", 2)  # warm-up
        cost = bench.per_request(admin, database, f"{url}/workflows/echo/run", "echo.lua", seconds,
                                 "SELECT count(*) FROM handlers WHERE status = 'completed'")
        return {**cost.pop("load"), **cost}
    finally:
        server.stop()


def table(load: str, rows: list[dict], builds: list[tuple[str, Path]]) -> list[str]:
    """The rounds of one load, each build on a line: every round, the median and the spread."""
    keys = ("p50_ms", "p99_ms") if load == "reload" else ("rps", "p99_ms")
    lines = [f"\n{load}:", "", "| build | " + " | ".join(f"{k} (rounds; median; spread)" for k in keys) + " |",
             "|---|" + "---|" * len(keys)]
    for name, dist in builds:
        cells = []
        for key in keys:
            values = [r[key] for r in rows if r["build"] == name and r["load"] == load]
            median = statistics.median(values)
            spread = (max(values) - min(values)) / median * 100 if median else 0
            cells.append(f"{' / '.join(str(v) for v in values)}; **{round(median, 2)}**; ±{round(spread / 2)} %")
        lines.append(f"| {name} ({dist}) | " + " | ".join(cells) + " |")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--loads", default=",".join(LOADS))
    args = parser.parse_args()
    loads = [load for load in args.loads.split(",") if load]
    for build in (args.base, args.new):
        if not (build / "leasehold").is_file():
            parser.error(f"{build}: no leasehold binary there (scripts/build-release DIR makes one)")
    if not 1 <= args.rounds <= 12 or not 5 <= args.seconds <= 120 or not set(loads) <= set(LOADS):
        parser.error(f"--rounds must be in [1, 12], --seconds in [5, 120], --loads of {','.join(LOADS)}")
    (bench.RESULTS / "raw").mkdir(parents=True, exist_ok=True)
    pgdir = bench.RESULTS / "raw" / "pg-ab"
    bench.sh(bench.PG, "destroy", pgdir)
    admin = bench.sh(bench.PG, "start", pgdir, "--durable").strip()
    bench.sh("psql", admin, "-XAtqc", "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    builds = [("base", args.base), ("new", args.new)]
    rows = []
    try:
        for number in range(args.rounds):
            for load in loads:
                for name, dist in builds:
                    bench.DIST = dist
                    result = measure(load, admin, f"ab_{name}_{load}", args.seconds)
                    rows.append({"round": number, "load": load, "build": name, **result})
                    print(json.dumps(rows[-1]), flush=True)
    finally:
        bench.sh(bench.PG, "destroy", pgdir)
    for load in loads:
        print("\n".join(table(load, rows, builds)))


if __name__ == "__main__":
    main()
