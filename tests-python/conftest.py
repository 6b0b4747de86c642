"""Fixtures that run real `leasehold` processes (the debug binary the test build made) on
loopback ports, against the in-memory store or a fresh database on the throwaway Postgres that
scripts/test started. Every wait is bounded."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from leasehold_kit.procs import binary, free_port  # noqa: F401  (the suites import it from here)
from leasehold_kit.replicas import launch
from leasehold_kit.waiting import wait_until  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
BIN = binary()
ADMIN_URL = os.environ.get("LEASEHOLD_TEST_DATABASE_URL")


def psql(url: str, sql: str) -> str:
    out = subprocess.run(["psql", url, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql],
                         check=True, capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


@pytest.fixture
def database_url():
    """A fresh, empty database; dropped afterwards."""
    if not ADMIN_URL:
        if os.environ.get("LEASEHOLD_REQUIRE_POSTGRES") == "1":
            pytest.fail("LEASEHOLD_TEST_DATABASE_URL is not set: run through scripts/test")
        pytest.skip("no test Postgres (run through scripts/test)")
    name = "py_" + uuid.uuid4().hex[:16]
    psql(ADMIN_URL, f"CREATE DATABASE {name}")
    base = ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    psql(ADMIN_URL, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@dataclass
class Replica:
    """One `leasehold serve` process: its flags, and its environment beyond this process's
    (`leasehold_kit.replicas.launch` drops this process's LEASEHOLD_* names)."""

    port: int
    replica_id: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    binary: str = BIN
    proc: subprocess.Popen | None = None
    stopped: bool = field(default=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True) -> "Replica":
        self.proc = launch(self.log_path, self.env, self.args, binary=self.binary)
        self.stopped = False
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0):
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"replica {self.replica_id} exited: {self.log_tail()}")
            return httpx.get(self.url + "/ready", timeout=1).status_code == 200
        wait_until(ready, timeout, what=f"{self.replica_id} ready")

    def signal(self, sig: int):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill9(self):
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.stopped = True

    def terminate(self, timeout: float = 15.0) -> int:
        self.signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self.stopped = True
        return code

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def spawn(tmp_path):
    """Starts replicas; every one is stopped at the end of the test."""
    replicas: list[Replica] = []

    def start(database_url: str | None = None, replica_id: str | None = None, extra: list[str] | None = None,
              env: dict[str, str] | None = None, wait_ready: bool = True, port: int | None = None,
              binary: str = BIN) -> Replica:
        port = port or free_port()
        rid = replica_id or f"r{len(replicas) + 1}"
        args = ["--port", str(port), "--replica-id", rid, *(extra or [])]
        if database_url:
            args += ["--database-url", database_url]
        replica = Replica(port, rid, args, env or {}, tmp_path / f"{rid}-{port}.log", binary)
        replicas.append(replica)
        return replica.start(wait_ready)

    yield start
    for replica in replicas:
        replica.stop()


@pytest.fixture(params=["memory", "postgres"])
def server(request):
    """One replica on each store. The database is set up first so that it is dropped last."""
    url = request.getfixturevalue("database_url") if request.param == "postgres" else None
    return request.getfixturevalue("spawn")(database_url=url)
