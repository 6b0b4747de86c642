"""The docker-compose topology as plain processes on this machine (no Docker engine needed):
a throwaway PostgreSQL (leasehold_kit.postgres), `leasehold migrate`, three replicas on loopback
ports and HAProxy in front on one port, routing by /ready. `deploy/local-cluster` runs this module
(`python -m leasehold_kit.local_cluster`); standard library only.

    deploy/local-cluster up        start everything (builds the debug binary if missing)
    deploy/local-cluster up --ha   the same on PostgreSQL with automatic failover (deploy/pg-ha: a
                                   pg_auto_failover monitor, primary and standby behind a read-write
                                   HAProxy listener); LH_HA=1 does the same
    deploy/local-cluster down      SIGTERM the replicas, stop HAProxy and PostgreSQL
    deploy/local-cluster status    the cluster table (leasehold status)
    deploy/local-cluster logs [rN] tail the logs
    deploy/local-cluster topology  the services, ports and environment as JSON (checked against compose)
    deploy/local-cluster start rN | stop rN | kill rN   one replica (drills use these)
    deploy/local-cluster pid rN | port rN | url         a replica's PID or port; the database URL

Settings (environment): LH_DIR (state, default deploy/.cluster), LH_PORT (load balancer, 8080),
LH_BASE_PORT (first replica, 8081), LH_LEASE_TTL (5s), LH_IDLE_TIMEOUT (60s), LH_BIN.
LH_DIR holds pg/ or pg-ha/ (the database), rN.pid and rN.log per replica, migrate.log,
haproxy.cfg and haproxy.pid.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from . import pg_ha, postgres
from .procs import ROOT, Failed, alive, binary, exit_status, pid_in, stop_pid_file
from .replicas import launch, replica_env
from .waiting import WaitTimeout, wait_until

REPLICAS = ("r1", "r2", "r3")
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/postgres"
LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an HTTP proxy


def http_ready(url: str) -> bool:
    """Whether GET `url` answers below 400 within a second (what `curl -f` calls success)."""
    try:
        with LOOPBACK.open(url, timeout=1) as answer:
            return answer.status < 400
    except (OSError, http.client.HTTPException):
        return False


def haproxy_config(template: str, dir: Path, lb_port: int, ports: dict[str, int]) -> str:
    """deploy/haproxy.cfg (the compose load balancer) on loopback: the listener on `lb_port`, each
    replica at its port, Docker's resolvers dropped, a pid file in DIR."""
    lines, dropping = [], False
    for line in template.splitlines():
        if line.startswith("resolvers docker"):
            dropping = True
        if dropping:
            dropping = line != ""
            continue
        line = line.replace("bind *:8080", f"bind 127.0.0.1:{lb_port}", 1)
        line = line.replace(" init-addr last,libc,none resolvers docker", "", 1)
        for r, port in ports.items():
            line = line.replace(f"server {r} {r}:8080 check", f"server {r} 127.0.0.1:{port} check", 1)
        lines.append(line)
        if line.startswith("global"):
            lines.append(f"    pidfile {dir}/haproxy.pid")
    return "\n".join(lines) + "\n"


@dataclass
class Cluster:
    """The local cluster's settings (see the module's docstring) and what it does with them."""

    dir: Path
    lb_port: int
    base: int
    ttl: str
    idle: str

    @classmethod
    def from_env(cls) -> "Cluster":
        env = os.environ
        return cls(Path(env.get("LH_DIR") or ROOT / "deploy" / ".cluster"), int(env.get("LH_PORT") or 8080),
                   int(env.get("LH_BASE_PORT") or 8081), env.get("LH_LEASE_TTL") or "5s",
                   env.get("LH_IDLE_TIMEOUT") or "60s")

    def port_of(self, r: str) -> int:
        if not re.fullmatch(r"r[0-9]+", r):
            raise Failed(f"local-cluster: a replica is named rN, not '{r}'", 2)
        return self.base + int(r[1:]) - 1

    def database_url(self) -> str:
        for path in (self.dir / "pg" / "url", self.dir / "pg-ha" / "url"):
            with suppress(OSError):
                return path.read_text().strip()
        return DEFAULT_URL

    def replica_env(self, r: str) -> dict[str, str]:
        return replica_env(r, self.port_of(r), self.database_url(),
                           settings={"LEASEHOLD_LEASE_TTL": self.ttl, "LEASEHOLD_IDLE_TIMEOUT": self.idle})

    def start_replica(self, r: str) -> None:
        """Starts rN unless its pid file names a live process. An operator's own LEASEHOLD_*
        settings (LEASEHOLD_LOG_LEVEL, say) reach the replicas too."""
        if alive(pid_in(self.dir / f"{r}.pid")):
            return
        replica = launch(self.dir / f"{r}.log", self.replica_env(r), inherit=True)
        (self.dir / f"{r}.pid").write_text(f"{replica.pid}\n")

    def wait_ready(self, r: str) -> None:
        try:
            wait_until(lambda: http_ready(f"http://127.0.0.1:{self.port_of(r)}/ready"), 60, f"{r} ready",
                       interval=0.1, ignoring=())
        except WaitTimeout:
            raise Failed(f"local-cluster: {r} did not become ready; see {self.dir}/{r}.log") from None

    def _database(self, ha: bool) -> None:
        """The database, started unless it answers: deploy/pg-ha's pair with `ha`, else scripts/pg's server."""
        if ha:
            if not (self.dir / "pg-ha" / "url").is_file() or not postgres.answers(self.database_url()):
                pg_ha.Pair(self.dir / "pg-ha").up()
        elif (not (self.dir / "pg" / "url").is_file() or not (self.dir / "pg" / "port").is_file()
              or not postgres.answers(self.database_url())):
            (self.dir / "pg.url").write_text(postgres.start(self.dir / "pg") + "\n")
            shutil.copy(self.dir / "pg.url", self.dir / "pg" / "url")

    def up(self, ha: bool) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if not os.access(binary(), os.X_OK):
            subprocess.run(["swift", "build", "--product", "leasehold"], cwd=ROOT, check=True)
        if not shutil.which("haproxy"):
            subprocess.run([str(ROOT / "scripts" / "setup")], check=True)
        self._database(ha)
        with open(self.dir / "migrate.log", "ab") as log:
            subprocess.run([binary(), "migrate", "--database-url", self.database_url()], stdout=log, stderr=log,
                           check=True)
        for r in REPLICAS:
            self.start_replica(r)
        for r in REPLICAS:
            self.wait_ready(r)
        template = (ROOT / "deploy" / "haproxy.cfg").read_text()
        ports = {r: self.port_of(r) for r in REPLICAS}
        (self.dir / "haproxy.cfg").write_text(haproxy_config(template, self.dir, self.lb_port, ports))
        stop_pid_file(self.dir / "haproxy.pid")
        subprocess.run(["haproxy", "-D", "-f", f"{self.dir}/haproxy.cfg"], check=True)
        with suppress(WaitTimeout):  # as before: a load balancer not ready yet is not an error here
            wait_until(lambda: http_ready(f"http://127.0.0.1:{self.lb_port}/ready"), 10, "the load balancer",
                       interval=0.1, ignoring=())
        print(f"cluster up: load balancer http://127.0.0.1:{self.lb_port}, replicas "
              f"{''.join(f'{port} ' for port in ports.values())}, database {self.database_url()}")

    def down(self) -> None:
        for r in REPLICAS:
            stop_pid_file(self.dir / f"{r}.pid", signal.SIGTERM)
        stop_pid_file(self.dir / "haproxy.pid", signal.SIGTERM)
        if (self.dir / "pg").is_dir():
            postgres.destroy(self.dir / "pg")
        if (self.dir / "pg-ha").is_dir():
            pg_ha.Pair(self.dir / "pg-ha").down()
        shutil.rmtree(self.dir, ignore_errors=True)
        print("cluster down")

    def topology(self) -> dict:
        """The load balancer and each replica's environment names, as deploy/docker-compose.yml has them."""
        return {"load_balancer": {"port": self.lb_port, "health": "/ready"},
                "replicas": {r: list(self.replica_env(r)) for r in REPLICAS}}


def run(cluster: Cluster, command: str, args: list[str]) -> int | None:
    """One command of `deploy/local-cluster` (see the module's docstring)."""
    replica = args[0] if args else ""
    match command:
        case "up":
            cluster.up(ha=args[:1] == ["--ha"] or os.environ.get("LH_HA", "0") == "1")
        case "down":
            cluster.down()
        case "status":
            return subprocess.run([binary(), "status", "--database-url", cluster.database_url(),
                                   "--lease-ttl", cluster.ttl, *args]).returncode
        case "logs":
            if replica:
                return subprocess.run(["tail", "-n", "50", f"{cluster.dir}/{replica}.log"]).returncode
            logs = sorted(map(str, cluster.dir.glob("r*.log"))) or [f"{cluster.dir}/r*.log"]
            return subprocess.run(["tail", "-n", "20", *logs]).returncode
        case "start":
            cluster.start_replica(replica)
            cluster.wait_ready(replica)
        case "stop":
            stop_pid_file(cluster.dir / f"{replica}.pid", signal.SIGTERM)
        case "kill":
            stop_pid_file(cluster.dir / f"{replica}.pid", signal.SIGKILL)
        case "pid":
            print((cluster.dir / f"{replica}.pid").read_text().strip())
        case "port":
            print(cluster.port_of(replica))
        case "url":
            print(cluster.database_url())
        case "topology":
            print(json.dumps(cluster.topology()))
    return None


# Each command, and whether it needs a replica's name (rN).
COMMANDS = {"up": False, "down": False, "status": False, "logs": False, "topology": False, "url": False,
            "start": True, "stop": True, "kill": True, "pid": True, "port": True}


def main(argv: list[str]) -> int:
    """`deploy/local-cluster COMMAND [ARG...]`; 2 and the usage for a wrong command line."""
    command, args = (argv[0], argv[1:]) if argv else ("", [])
    if command not in COMMANDS or (COMMANDS[command] and not args):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    return exit_status("local-cluster", lambda: run(Cluster.from_env(), command, args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
