"""Python helpers shared by the test suites (tests-python), the drills (deploy/drills), the
randomized fault run (deploy/nemesis) and the benchmarks (bench): one copy of each.

The harness's process management lives here too, one module per program, each runnable as
`python -m leasehold_kit.MODULE` behind a thin shell entry point: `postgres` (scripts/pg, a
throwaway PostgreSQL), `pg_ha` (deploy/pg-ha, the failover pair), `local_cluster`
(deploy/local-cluster); `replicas` starts every `leasehold serve` a harness runs; `procs` runs
commands and stops processes by PID; `waiting` bounds every wait. Those need only the standard
library (tools/python/run runs them on the system python3).

`scripts/setup` puts this directory on the project venv's path (a `.pth` file), so every script
run with `.venv/bin/python` imports `leasehold_kit` without touching `sys.path`.
"""
