"""The harness's process management: leasehold_kit.postgres, .pg_ha and .local_cluster (behind
scripts/pg, deploy/pg-ha and deploy/local-cluster) and the one replica launcher
(leasehold_kit.replicas). Their command lines, pg_autoctl's tables as they read them, the
configurations they write, what a replica is started with, stopping by PID; and one throwaway
PostgreSQL started and destroyed for real. No replica, no HA pair; every wait is bounded."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from leasehold_kit import postgres, procs
from leasehold_kit.local_cluster import Cluster, haproxy_config
from leasehold_kit.pg_ha import Pair, first_node_in, healthy_in, monitor_uri_in, primary_in
from leasehold_kit.replicas import launch, replica_env

ROOT = Path(__file__).resolve().parents[1]

# `pg_autoctl show state` and `show uri` of a pair deploy/pg-ha started (pg_auto_failover 2.0).
HEALTHY = """\
  Name |  Node |       Host:Port |       TLI: LSN |   Connection |      Reported State |      Assigned State
-------+-------+-----------------+----------------+--------------+---------------------+--------------------
node_1 |     1 | 127.0.0.1:47939 |   1: 0/30000D8 |   read-write |             primary |             primary
node_2 |     2 | 127.0.0.1:51777 |   1: 0/30000D8 |    read-only |           secondary |           secondary

"""
# 14 s after `deploy/pg-ha crash-primary` killed node1.
FAILING_OVER = """\
  Name |  Node |       Host:Port |       TLI: LSN |   Connection |      Reported State |      Assigned State
-------+-------+-----------------+----------------+--------------+---------------------+--------------------
node_1 |     1 | 127.0.0.1:47939 |   1: 0/3000110 | read-write ! |             primary |             demoted
node_2 |     2 | 127.0.0.1:51777 |   2: 0/30002D8 |   read-write |        wait_primary |        wait_primary

"""
# After `deploy/pg-ha restart node1` and a switchover back and forth: node2 primary.
SWITCHED = """\
  Name |  Node |       Host:Port |       TLI: LSN |   Connection |      Reported State |      Assigned State
-------+-------+-----------------+----------------+--------------+---------------------+--------------------
node_1 |     1 | 127.0.0.1:47939 |   2: 0/30003C0 |    read-only |           secondary |           secondary
node_2 |     2 | 127.0.0.1:51777 |   2: 0/30003C0 |   read-write |             primary |             primary

"""
# node1 alone, before node2 joins.
SINGLE = """\
  Name |  Node |       Host:Port |       TLI: LSN |   Connection |      Reported State |      Assigned State
-------+-------+-----------------+----------------+--------------+---------------------+--------------------
node_1 |     1 | 127.0.0.1:47939 |   1: 0/3000060 |   read-write |              single |              single

"""
SHOW_URI = """\
        Type |    Name | Connection String
-------------+---------+-------------------------------
     monitor | monitor | postgres://autoctl_node@127.0.0.1:42003/pg_auto_failover?sslmode=prefer
   formation | default | postgres://127.0.0.1:47939,127.0.0.1:51777/postgres?target_session_attrs=read-write&sslmode=prefer

"""


def run(*command: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=60, env=env)


def test_the_process_modules_run_on_the_system_python_with_the_standard_library_only():
    """scripts/pg runs before scripts/setup has made the venv: nothing outside the standard library."""
    code = ("import sys; import leasehold_kit.postgres, leasehold_kit.pg_ha, leasehold_kit.local_cluster; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] not in sys.stdlib_module_names "
            "and m != '__main__' and not m.startswith('leasehold_kit')))")
    done = run(shutil.which("python3"), "-S", "-c", code, env={"PYTHONPATH": str(ROOT / "tools" / "python")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("program,args", [
    ("scripts/pg", []), ("scripts/pg", ["start"]), ("scripts/pg", ["bogus", "/tmp/x"]),
    ("scripts/pg", ["listen", "/tmp/x"]), ("scripts/pg", ["standby", "/tmp/x"]),
    ("deploy/pg-ha", []), ("deploy/pg-ha", ["up"]), ("deploy/pg-ha", ["restart", "node1"]),
    ("deploy/local-cluster", []), ("deploy/local-cluster", ["bogus"]), ("deploy/local-cluster", ["start"]),
])
def test_a_wrong_command_line_prints_the_usage_and_exits_2(program, args):
    done = run(ROOT / program, *args)
    assert done.returncode == 2 and done.stdout == ""
    assert program in done.stderr


def test_a_clock_offset_is_a_signed_number(tmp_path):
    done = run(ROOT / "scripts" / "pg", "clock", tmp_path, "soon")
    assert done.returncode == 2
    assert "SECONDS must be a number like +3, -1.5 or 0" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_url_of_a_server_never_started_fails(tmp_path):
    done = run(ROOT / "scripts" / "pg", "url", tmp_path / "none")
    assert done.returncode == 1 and done.stdout == ""
    assert "scripts/pg:" in done.stderr


def test_pg_autoctl_tables_as_deploy_pg_ha_reads_them():
    assert (primary_in(HEALTHY), healthy_in(HEALTHY), first_node_in(HEALTHY)) == ("node1", True, True)
    # Both states must say primary (wait_primary counts, as it did): the promoted standby.
    assert (primary_in(FAILING_OVER), healthy_in(FAILING_OVER)) == ("node2", False)
    assert (primary_in(SWITCHED), healthy_in(SWITCHED), first_node_in(SWITCHED)) == ("node2", True, False)
    assert (primary_in(SINGLE), healthy_in(SINGLE), first_node_in(SINGLE)) == (None, False, True)
    assert (primary_in(""), healthy_in(""), first_node_in("")) == (None, False, False)
    assert monitor_uri_in(SHOW_URI) == "postgres://autoctl_node@127.0.0.1:42003/pg_auto_failover?sslmode=prefer"
    assert monitor_uri_in("") == ""


def test_the_pg_ha_load_balancer_checks_for_the_read_write_node(tmp_path):
    for name, port in {"rw": 7000, "node1": 7001, "node2": 7002}.items():
        (tmp_path / f"{name}.port").write_text(f"{port}\n")
    pair = Pair(tmp_path)
    pair.write_haproxy()
    config = (tmp_path / "haproxy.cfg").read_text()
    assert f"pidfile {tmp_path}/haproxy.pid" in config and "bind 127.0.0.1:7000" in config
    assert "server node1 127.0.0.1:7001 check" in config and "server node2 127.0.0.1:7002 check" in config
    assert f"external-check command {tmp_path}/check-rw" in config
    check = tmp_path / "check-rw"
    assert os.access(check, os.X_OK) and "SHOW transaction_read_only" in check.read_text()
    assert pair.url() == "postgres://postgres@127.0.0.1:7000/postgres"


def test_a_cluster_replica_gets_its_address_id_database_and_settings():
    env = replica_env("r2", 8082, "postgres://db", settings={"LEASEHOLD_LEASE_TTL": "2s"})
    assert list(env.items()) == [
        ("LEASEHOLD_HOST", "127.0.0.1"), ("LEASEHOLD_PORT", "8082"), ("LEASEHOLD_REPLICA_ID", "r2"),
        ("LEASEHOLD_ADVERTISE_ADDRESS", "http://127.0.0.1:8082"), ("LEASEHOLD_DATABASE_URL", "postgres://db"),
        ("LEASEHOLD_LEASE_TTL", "2s"), ("LEASEHOLD_LOG_FORMAT", "json")]
    assert replica_env("r4", 8090, "postgres://db", host="10.213.1.2")["LEASEHOLD_ADVERTISE_ADDRESS"] == \
        "http://10.213.1.2:8090"


def test_the_local_cluster_reads_its_settings_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LH_DIR", str(tmp_path))
    monkeypatch.setenv("LH_BASE_PORT", "9001")
    monkeypatch.setenv("LH_LEASE_TTL", "2s")
    monkeypatch.delenv("LH_IDLE_TIMEOUT", raising=False)
    cluster = Cluster.from_env()
    assert cluster.replica_env("r3") == replica_env(
        "r3", 9003, "postgres://postgres@127.0.0.1:5432/postgres",
        settings={"LEASEHOLD_LEASE_TTL": "2s", "LEASEHOLD_IDLE_TIMEOUT": "60s"})
    (tmp_path / "pg").mkdir()
    (tmp_path / "pg" / "url").write_text("postgres://postgres@127.0.0.1:5999/postgres\n")
    assert cluster.replica_env("r1")["LEASEHOLD_DATABASE_URL"] == "postgres://postgres@127.0.0.1:5999/postgres"
    done = run(ROOT / "deploy" / "local-cluster", "topology", env=dict(os.environ, LH_PORT="9000"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"load_balancer": {"port": 9000, "health": "/ready"},
                                       "replicas": {r: list(cluster.replica_env(r)) for r in ("r1", "r2", "r3")}}


def test_the_local_load_balancer_is_the_compose_one_on_loopback(tmp_path):
    config = haproxy_config((ROOT / "deploy" / "haproxy.cfg").read_text(), tmp_path, 9000,
                            {"r1": 9001, "r2": 9002, "r3": 9003})
    lines = config.splitlines()
    assert lines[lines.index("global") + 1] == f"    pidfile {tmp_path}/haproxy.pid"
    assert "    bind 127.0.0.1:9000" in lines
    assert [line.strip() for line in lines if line.strip().startswith("server ")] == [
        "server r1 127.0.0.1:9001 check", "server r2 127.0.0.1:9002 check", "server r3 127.0.0.1:9003 check"]
    assert "resolvers" not in config and "127.0.0.11" not in config and "init-addr" not in config
    assert "option httpchk GET /ready" in config


def test_a_replica_is_launched_with_its_environment_and_not_the_callers(tmp_path, monkeypatch):
    fake = tmp_path / "leasehold"
    fake.write_text('#!/bin/sh\necho "args: $*; wrapped: ${WRAPPED:-no}"\nenv | grep "^LEASEHOLD_" | sort\n')
    fake.chmod(0o755)
    log = tmp_path / "r1.log"
    for name in [name for name in os.environ if name.startswith("LEASEHOLD_")]:
        monkeypatch.delenv(name)  # (scripts/with-test-db sets some: the test names its own)
    monkeypatch.setenv("LEASEHOLD_FROM_CALLER", "leaks")
    assert launch(log, {"LEASEHOLD_PORT": "1"}, ["--port", 1], binary=str(fake)).wait(timeout=10) == 0
    assert log.read_text() == "args: serve --port 1; wrapped: no\nLEASEHOLD_PORT=1\n"
    launch(log, {}, binary=str(fake), wrapper=["env", "WRAPPED=yes"], inherit=True).wait(timeout=10)
    assert log.read_text().splitlines()[2:] == ["args: serve; wrapped: yes", "LEASEHOLD_FROM_CALLER=leaks"]
    launch(log, {}, binary=str(fake), truncate=True).wait(timeout=10)
    assert log.read_text() == "args: serve; wrapped: no\n"


def test_a_process_is_stopped_by_its_pid_file_and_killed_when_it_ignores_sigterm(tmp_path):
    pid_file = tmp_path / "p.pid"
    sleeper = subprocess.Popen(["sleep", "60"])
    pid_file.write_text(f"{sleeper.pid}\n")
    procs.stop_pid_file(pid_file)
    assert sleeper.wait(timeout=5) == -signal.SIGTERM and not pid_file.exists()
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                                 "signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"],
                                stdout=subprocess.PIPE, text=True)
    assert stubborn.stdout.readline() == "ready\n"
    pid_file.write_text(f"{stubborn.pid}\n")
    procs.stop_pid_file(pid_file, grace=0.5)
    assert stubborn.wait(timeout=5) == -signal.SIGKILL
    procs.stop_pid_file(pid_file)  # none left: nothing to do


def test_a_throwaway_postgres_starts_answers_and_is_destroyed():
    if postgres.find_bin() is None:
        pytest.skip("no PostgreSQL server binaries (scripts/setup installs them)")
    # Not under pytest's tmp_path: that is private to root, and the server runs as `postgres`.
    top = Path(tempfile.mkdtemp(prefix="lh-harness-", dir="/tmp"))
    top.chmod(0o755)
    dir, postmaster = top / "pg", None
    try:
        started = run(sys.executable, "-m", "leasehold_kit.postgres", "start", dir)
        assert started.returncode == 0, started.stderr
        port = (dir / "port").read_text().strip()
        assert started.stdout == f"postgres://postgres@127.0.0.1:{port}/postgres\n"
        assert run(ROOT / "scripts" / "pg", "url", dir).stdout == started.stdout
        assert procs.sh("psql", started.stdout.strip(), "-XAtc", "select 1") == "1"
        assert "-c fsync=off" in (dir / "opts").read_text()
        assert run(sys.executable, "-m", "leasehold_kit.postgres", "kill", dir).returncode == 0
        assert not postgres.answers(started.stdout.strip())
        again = run(sys.executable, "-m", "leasehold_kit.postgres", "start", dir)
        assert again.stdout == started.stdout  # the same port, the same data
        postmaster = procs.pid_in(dir / "data" / "postmaster.pid")
        assert procs.alive(postmaster)
    finally:
        destroyed = run(sys.executable, "-m", "leasehold_kit.postgres", "destroy", dir)
        shutil.rmtree(top, ignore_errors=True)
    assert destroyed.returncode == 0 and not dir.exists()
    assert not procs.alive(postmaster)
