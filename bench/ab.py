#!/usr/bin/env python3
"""A/B of two release builds on one durable PostgreSQL: echo `run` at 64 connections, the builds
alternating round by round (so machine drift hits both), with what each costs per run
(statements and commits from pg_stat_statements / pg_stat_database, CPU of the server and of
Postgres). Loopback only; every load is bounded in time.

    .venv/bin/python bench/ab.py BASE_DIST NEW_DIST [--rounds 3] [--seconds 15]

A DIST is a directory like dist/ (scripts/build-release DIR): the `leasehold` binary and its
resource bundles. Prints one JSON line per round and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import run as bench  # bench/run.py: the shared load and cost helpers


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=15)
    args = parser.parse_args()
    for build in (args.base, args.new):
        if not (build / "leasehold").is_file():
            parser.error(f"{build}: no leasehold binary there (scripts/build-release DIR makes one)")
    if not 1 <= args.rounds <= 10 or not 5 <= args.seconds <= 120:
        parser.error("--rounds must be in [1, 10] and --seconds in [5, 120]")
    (bench.RESULTS / "raw").mkdir(parents=True, exist_ok=True)
    pgdir = bench.RESULTS / "raw" / "pg-ab"
    bench.sh(bench.PG, "destroy", pgdir)
    admin = bench.sh(bench.PG, "start", pgdir, "--durable").strip()
    bench.sh("psql", admin, "-XAtqc", "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    rows = []
    try:
        for number in range(args.rounds):
            for name, dist in (("base", args.base), ("new", args.new)):
                bench.DIST = dist
                database = f"ab_{name}"
                port = bench.free_port()
                server = bench.leasehold(bench.database(admin, database), port)
                url = f"http://127.0.0.1:{port}/workflows/echo/run"
                try:
                    bench.wrk(url, "echo.lua", 2)  # warm-up
                    cost = bench.per_request(admin, database, url, "echo.lua", args.seconds,
                                             "SELECT count(*) FROM handlers WHERE status = 'completed'")
                finally:
                    server.stop()
                rows.append({"round": number, "build": name, **cost})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        bench.sh(bench.PG, "destroy", pgdir)
    print("\n| build | requests/s | p99 | statements per run | commits per run | Leasehold CPU per run | Postgres CPU per run |")
    print("|---|---|---|---|---|---|---|")
    for name, dist in (("base", args.base), ("new", args.new)):
        mine = [r for r in rows if r["build"] == name]
        def median(key, inner=None):
            return round(statistics.median(r[key][inner] if inner else r[key] for r in mine), 3)
        print(f"| {name} ({dist}) | {' / '.join(str(r['load']['rps']) for r in mine)} | "
              f"{' / '.join(str(r['load']['p99_ms']) for r in mine)} ms | {median('statements_per_request')} | "
              f"{median('commits_per_request')} | {median('server_cpu_ms_per_request')} ms | "
              f"{median('postgres_cpu_ms_per_request')} ms |")


if __name__ == "__main__":
    main()
