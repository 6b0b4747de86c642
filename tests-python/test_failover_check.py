"""[pg-ha] A database that goes back in time is noticed, against real PostgreSQL replication.

A primary and an asynchronous streaming standby (scripts/pg start / standby), a replica reaching
them through a TCP proxy that plays the load balancer's part (it moves to the promoted standby and
cuts the old connections, as HAProxy does when its check marks a server down). Asynchronous
replication is what lets a promoted standby lack writes the primary acknowledged: the standby is
detached (it stops receiving WAL), handlers are created and acknowledged on the primary alone,
the primary crashes and the standby is promoted. The replica must see the new timeline, find that
the database lost what it had acknowledged, void its leases, move the token sequence past every
token it saw and come back after one TTL. The control case promotes a standby that had everything:
the failover is checked and nothing stops. Every wait is bounded."""

from __future__ import annotations

import re
import selectors
import shutil
import socket
import tempfile
import threading
from pathlib import Path

import httpx
import pytest

from leasehold_kit.cluster import lease, start, wait_all_finished
from leasehold_kit.procs import sh
from conftest import ROOT, wait_until

PG = ROOT / "scripts" / "pg"
TTL = "2s"


class Proxy:
    """A loopback TCP proxy whose target can be moved; moving it closes every open connection."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)

    def __enter__(self) -> "Proxy":
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.listener.close()
        self.thread.join(timeout=5)
        self.close_all()

    def move(self, target_port: int):
        with self.lock:
            self.target = target_port
        self.close_all()

    def close_all(self):
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for a, b in pairs:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def serve(self):
        self.listener.settimeout(0.1)
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            with self.lock:
                target = self.target
            try:
                upstream = socket.create_connection(("127.0.0.1", target), timeout=2)
            except OSError:
                client.close()  # the server is down: the client sees a refused/closed connection
                continue
            upstream.settimeout(None)
            with self.lock:
                self.pairs.append((client, upstream))
            threading.Thread(target=self.pump, args=(client, upstream), daemon=True).start()

    @staticmethod
    def pump(a: socket.socket, b: socket.socket):
        sel = selectors.DefaultSelector()
        try:
            sel.register(a, selectors.EVENT_READ, b)
            sel.register(b, selectors.EVENT_READ, a)
            while True:
                for key, _ in sel.select(timeout=1):
                    data = key.fileobj.recv(65536)
                    if not data:
                        return
                    key.data.sendall(data)
        except (OSError, ValueError):
            return
        finally:
            sel.close()
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def psql(url: str, sql: str) -> str:
    return sh("psql", url, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql, timeout=30)


@pytest.fixture
def replicated():
    """A primary and its asynchronous standby on loopback; both destroyed afterwards. (Not under
    pytest's tmp_path: the servers run as the `postgres` user, who cannot enter root's 0700 dirs.)"""
    if not Path("/usr/lib/postgresql").exists():
        pytest.skip("PostgreSQL is not installed (scripts/test installs it)")
    base = Path(tempfile.mkdtemp(prefix="leasehold-replication-"))
    base.chmod(0o755)
    primary, standby = base / "primary", base / "standby"
    try:
        primary_url = sh(PG, "start", primary)
        standby_url = sh(PG, "standby", standby, primary)
        yield primary, primary_url, standby, standby_url
    finally:
        sh(PG, "destroy", standby, check=False)
        sh(PG, "destroy", primary, check=False)
        shutil.rmtree(base, ignore_errors=True)


def caught_up(primary_url: str, standby_url: str):
    """Waits until the standby has replayed everything the primary has written so far."""
    target = psql(primary_url, "SELECT pg_current_wal_lsn()")
    wait_until(lambda: psql(standby_url, f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn") == "t",
               timeout=30, what="the standby to catch up")


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    match = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def answer(url: str, handler_id: str):
    r = httpx.post(f"{url}/events/{handler_id}",
                   json={"event": {"type": "HumanResponseEvent", "value": {"_data": {"response": "yes"}}}}, timeout=10)
    assert r.status_code == 200, r.text


def test_promoted_async_standby_that_lost_writes_is_detected(replicated, spawn):
    primary, primary_url, standby, standby_url = replicated
    with Proxy(port_of(primary_url)) as proxy:
        url = f"postgres://postgres@127.0.0.1:{proxy.port}/postgres"
        replica = spawn(database_url=url, extra=["--lease-ttl", TTL, "--idle-timeout", "off"])
        start(replica.url, "approval", {"request": "kept"}, "before")
        wait_until(lambda: lease(replica.url, "before")["live_here"], what="the first handler live")
        before = wait_until(lambda: httpx.get(f"{replica.url}/cluster", timeout=5).json()["database"],
                            what="the first renewal's database node")
        assert before["timeline"] == 1 and before["failover_checks_failed"] == 0, before
        caught_up(primary_url, standby_url)

        sh(PG, "detach", standby)
        # Acknowledged by the primary alone: created (durable there before run-nowait answers).
        lost = [f"lost-{i}" for i in range(3)]
        for handler_id in lost:
            start(replica.url, "approval", {"request": "lost"}, handler_id)
        granted = max(lease(replica.url, h)["fencing_token"] for h in ["before", *lost])
        sh(PG, "kill", primary)
        # As with a real failover tool, the replacement comes after the replica has lost its
        # database for longer than self-fencing allows: every handler here has stopped, and what
        # it was told must still be checked.
        wait_until(lambda: httpx.get(f"{replica.url}/ready", timeout=2).status_code == 503, timeout=30,
                   what="the replica to stop (self-fenced, not ready)")
        wait_until(lambda: metric(replica.url, "leasehold_self_fences_total") >= 1, timeout=30,
                   what="the replica's handlers self-fenced")
        sh(PG, "promote", standby)
        proxy.move(port_of(standby_url))

        wait_until(lambda: metric(replica.url, "leasehold_failover_checks_failed_total") >= 1, timeout=60,
                   what="the failed check to be detected")
        assert "failover check failed" in replica.log_path.read_text(errors="replace")
        # Back after one TTL, registered anew, on the new timeline.
        replica.wait_ready(timeout=60)
        after = wait_until(lambda: httpx.get(f"{replica.url}/cluster", timeout=5).json()["database"],
                           what="the database node")
        assert after["timeline"] == 2 and after["failover_checks_failed"] == 1, after
        assert after["system_identifier"] == before["system_identifier"]
        # The lost handlers are gone from the database (that is what going back in time means);
        # the one it kept runs again and completes, and no token is handed out a second time.
        for handler_id in lost:
            assert httpx.get(f"{replica.url}/handlers/{handler_id}", timeout=5).status_code == 404
        start(replica.url, "approval", {"request": "after"}, "after")
        assert lease(replica.url, "after")["fencing_token"] > granted
        wait_until(lambda: lease(replica.url, "before")["owner"] is not None, timeout=30, what="reclaimed")
        assert lease(replica.url, "before")["fencing_token"] > granted
        answer(replica.url, "before")
        assert wait_all_finished(replica.url, ["before"], timeout=60) == {"before": "completed"}
        assert metric(replica.url, "leasehold_failover_checks_failed_total") == 1


def test_promoted_standby_that_had_everything_goes_on(replicated, spawn):
    primary, primary_url, standby, standby_url = replicated
    with Proxy(port_of(primary_url)) as proxy:
        url = f"postgres://postgres@127.0.0.1:{proxy.port}/postgres"
        replica = spawn(database_url=url, extra=["--lease-ttl", TTL, "--idle-timeout", "off"])
        for handler_id in ("a", "b"):
            start(replica.url, "approval", {"request": "x"}, handler_id)
            wait_until(lambda: lease(replica.url, handler_id)["live_here"], what=f"{handler_id} live")
        # The replica must have seen the primary's timeline (its first renewal) before the
        # failover, or the promoted node is simply the first it knows and nothing is checked.
        before = wait_until(lambda: httpx.get(f"{replica.url}/cluster", timeout=5).json()["database"],
                            what="the first renewal's database node")
        assert before["timeline"] == 1, before
        caught_up(primary_url, standby_url)
        sh(PG, "kill", primary)
        sh(PG, "promote", standby)
        proxy.move(port_of(standby_url))

        wait_until(lambda: httpx.get(f"{replica.url}/cluster", timeout=5).json()["database"]["failovers_seen"] >= 1,
                   timeout=60, what="the failover to be checked")
        database = httpx.get(f"{replica.url}/cluster", timeout=5).json()["database"]
        assert database["timeline"] == 2 and database["failover_checks_failed"] == 0, database
        for handler_id in ("a", "b"):
            answer(replica.url, handler_id)
        assert wait_all_finished(replica.url, ["a", "b"], timeout=60) == {"a": "completed", "b": "completed"}
        assert metric(replica.url, "leasehold_failover_checks_failed_total") == 0
