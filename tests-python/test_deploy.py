"""Deployment: the compose file validates and matches the local cluster; every drill passes once
against a real local cluster (three replicas, HAProxy, Postgres) on free loopback ports."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import warnings
import tempfile
from pathlib import Path

import pytest
import yaml
from leasehold_kit import procs

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "deploy" / "docker-compose.yml"


def test_compose_file_validates():
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.fail("docker-compose is not installed (scripts/setup installs Debian's package)")
    result = subprocess.run([compose, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_compose_matches_the_local_cluster():
    # Compose's interpolation with every variable unset: `${VAR:-default}` is its default.
    spec = yaml.safe_load(re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", COMPOSE.read_text()))
    topology = json.loads(subprocess.run([str(ROOT / "deploy" / "local-cluster"), "topology"],
                                         check=True, capture_output=True, text=True, timeout=30).stdout)
    services = spec["services"]
    assert {"postgres", "migrate", "lb"} <= set(services)
    assert set(topology["replicas"]) == {name for name in services if name.startswith("r")}
    for name, keys in topology["replicas"].items():
        service = services[name]
        assert set(service["environment"]) == set(keys), name
        assert service["environment"]["LEASEHOLD_REPLICA_ID"] == name
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["lb"]["ports"] == [f"{topology['load_balancer']['port']}:8080"]
    haproxy = (ROOT / "deploy" / "haproxy.cfg").read_text()
    assert f"option httpchk GET {topology['load_balancer']['health']}" in haproxy
    assert "postgres" in services["postgres"]["image"] and "healthcheck" in services["postgres"]


def free_port_block(size: int) -> int:
    for start in range(20000, 60000, 97):
        sockets = []
        try:
            for port in range(start, start + size):
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                sockets.append(s)
            return start
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no free port block")


def test_image_runtime_stage_has_what_the_binary_links():
    """Checked piecewise here (the image itself is built and run by tests-python/test_compose.py,
    opt-in): the Dockerfile builds with the release script's image mode, which links the Swift
    runtime statically, runs as a non-root user with a /health check and stops on SIGTERM; so the
    slim runtime stage needs only what the binary links outside the Swift runtime, all of it in
    Debian's bookworm-slim base (libc, libm, libstdc++, libgcc_s)."""
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "scripts/build-release /dist --image" in dockerfile
    assert "--static-swift-stdlib" in (ROOT / "scripts" / "build-release").read_text()
    assert "USER leasehold" in dockerfile and "useradd --system" in dockerfile
    assert "HEALTHCHECK" in dockerfile and "/health" in dockerfile and "STOPSIGNAL SIGTERM" in dockerfile
    linked = subprocess.run(["ldd", procs.binary()], capture_output=True, text=True, check=True).stdout.splitlines()
    base = {"linux-vdso.so.1", "libc.so.6", "libm.so.6", "libstdc++.so.6", "libgcc_s.so.1", "libdl.so.2",
            "libpthread.so.0", "librt.so.1", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1", "libutil.so.1"}
    missing = []
    for line in linked:
        name = line.split()[0].rsplit("/", 1)[-1]
        target = line.split("=>")[1].split("(")[0].strip() if "=>" in line else ""
        if "not found" in line:
            missing.append(line.strip())
        elif name not in base and "/swift/" not in target:
            missing.append(f"{name} => {target} (neither the Swift runtime nor bookworm-slim)")
    assert not missing, missing


def test_every_drill_passes_once(tmp_path):
    base = free_port_block(4)
    # Not under pytest's tmp_path: that is private to root, and the throwaway Postgres runs as `postgres`.
    cluster_dir = Path(tempfile.mkdtemp(prefix="lh-drills-", dir="/tmp"))
    cluster_dir.chmod(0o755)
    env = dict(os.environ, LH_DIR=str(cluster_dir / "cluster"), LH_PORT=str(base), LH_BASE_PORT=str(base + 1),
               LH_LEASE_TTL="2s")
    env = {k: v for k, v in env.items() if not k.startswith("LEASEHOLD_")}
    try:
        result = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "deploy" / "drills" / "drill.py"),
                                 "--runs", "1", "--table", str(tmp_path / "drills.md")],
                                env=env, capture_output=True, text=True, timeout=900)
        # After the drills, the cluster still serves the real client through the load balancer.
        from llama_agents.client import WorkflowClient

        async def through_the_load_balancer():
            client = WorkflowClient(base_url=f"http://127.0.0.1:{base}")
            data = await client.run_workflow("fanout", start_event={"items": [1, 2, 3]})
            assert data.status == "completed" and data.result.value == {"result": 12}
            return (await client.is_healthy()).status

        assert asyncio.run(asyncio.wait_for(through_the_load_balancer(), 60)) == "healthy"
    finally:
        subprocess.run([str(ROOT / "deploy" / "local-cluster"), "down"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(cluster_dir, ignore_errors=True)
    print(result.stdout)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert {line["drill"] for line in lines} == {"kill9", "pause", "rolling-restart", "pg-restart", "conn-drop", "partition"}
    ran = [line for line in lines if "skipped" not in line]
    for line in lines:
        if "skipped" in line:  # only the partition drill can skip: no network namespaces (not root)
            assert line["drill"] == "partition", line
            warnings.warn(f"partition drill skipped: {line['skipped']}")
    assert all(line["passed"] and line["lost"] == 0 and line["bad_sequences"] == 0 for line in ran)
    for line in ran:
        if line["drill"] == "partition":
            assert line["network"] == "netns+veth" and line["stale_replica_fences"] > 0, line


def test_randomized_faults_fixed_seeds():
    """Two short fixed seeds of the randomized fault run (deploy/nemesis): its checker must find no
    violation over the recorded history. Long runs: `deploy/nemesis/run --minutes N`."""
    base = free_port_block(4)
    cluster_dir = Path(tempfile.mkdtemp(prefix="lh-nemesis-", dir="/tmp"))
    cluster_dir.chmod(0o755)
    env = dict(os.environ, LH_DIR=str(cluster_dir / "cluster"), LH_PORT=str(base), LH_BASE_PORT=str(base + 1),
               LH_LEASE_TTL="2s", LH_IDLE_TIMEOUT="1s")
    env = {k: v for k, v in env.items() if not k.startswith("LEASEHOLD_")}
    try:
        result = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "deploy" / "nemesis" / "nemesis.py"),
                                 "--seeds", "2", "--seconds", "15", "--down"],
                                env=env, capture_output=True, text=True, timeout=900)
    finally:
        subprocess.run([str(ROOT / "deploy" / "local-cluster"), "down"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(cluster_dir, ignore_errors=True)
    print(result.stdout)
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 2, result.stdout[-4000:] + result.stderr[-4000:]
    for line in lines:
        assert line["violations"] == 0, line
        assert line["handlers"] > 0 and sum(line["faults"].values()) > 0, line
    assert result.returncode == 0, result.stderr[-4000:]
