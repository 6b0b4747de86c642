"""PostgreSQL with automatic failover, on loopback: a pg_auto_failover monitor, two nodes (primary
and synchronous standby), and HAProxy in front with one read-write listener, so that Leasehold
keeps one database URL across failovers. `deploy/pg-ha` runs this module
(`python -m leasehold_kit.pg_ha`); standard library only.

    deploy/pg-ha up DIR [PORT]      start everything (PORT: the read-write listener; default a free one);
                                    prints the database URL
    deploy/pg-ha down DIR           stop everything and delete DIR
    deploy/pg-ha url DIR            the database URL (through HAProxy)
    deploy/pg-ha state DIR          pg_autoctl show state
    deploy/pg-ha primary DIR        the node that is primary now (node1 or node2)
    deploy/pg-ha wait-healthy DIR   until one primary and one secondary are reported (bounded: 120 s)
    deploy/pg-ha switchover DIR     planned: pg_autoctl perform switchover
    deploy/pg-ha crash-primary DIR  kill -9 every process of the primary node (its keeper and its postgres),
                                    by PID; prints the node
    deploy/pg-ha restart NODE DIR   start a node again after a crash (it rejoins as a standby)

Installs Debian's postgresql-15-auto-failover and haproxy when missing. Runs PostgreSQL and
pg_autoctl as the non-root `postgres` user when invoked as root. DIR holds monitor/, node1/,
node2/ (data), NAME.port, NAME.pid (each keeper's process group), NAME.log, xdg/, rw.port,
haproxy.cfg, check-rw and url.

Timeouts, tuned from pg_auto_failover's defaults (which took ~51 s to fail over a crashed primary
here) to fail over in ~15 s: the monitor checks every node each second (health_check_period 1 s,
timeout 1 s, 1 retry after 0.5 s), calls a node unhealthy after 5 s without an answer
(node_considered_unhealthy_timeout), and lets a primary demote itself for at most 10 s
(primary_demote_timeout); a keeper that cannot reach the monitor nor its standby for 5 s considers
itself partitioned and stops accepting writes (network_partition_timeout). Shorter timeouts fail
over sooner but a stall of that length (a loaded machine, a long checkpoint) then costs a
needless failover. Replication is synchronous (pg_auto_failover's default for two nodes, ANY 1):
a commit is acknowledged only once the standby has it, so a failover never loses an acknowledged
write — and while the standby is down, the primary accepts writes alone (pg_auto_failover drops
the synchronous requirement once it has marked the standby unhealthy).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from contextlib import suppress
from pathlib import Path

from .postgres import answers, apt_install, as_postgres, give_to_postgres
from .procs import Failed, alive, children, command_line, exit_status, free_port, pid_in, signal_each
from .waiting import WaitTimeout, wait_until

BIN = "/usr/lib/postgresql/15/bin"
NODES = ("node1", "node2")
MONITOR_SETTINGS = """\
ALTER SYSTEM SET pgautofailover.health_check_period = 1000;
ALTER SYSTEM SET pgautofailover.health_check_timeout = 1000;
ALTER SYSTEM SET pgautofailover.health_check_max_retries = 1;
ALTER SYSTEM SET pgautofailover.health_check_retry_delay = 500;
ALTER SYSTEM SET pgautofailover.node_considered_unhealthy_timeout = 5000;
ALTER SYSTEM SET pgautofailover.primary_demote_timeout = 10000;
SELECT pg_reload_conf();
"""
# The HAProxy check: a server is up only where `SHOW transaction_read_only` is off (not
# pg_is_in_recovery(): pg_auto_failover keeps a just-promoted node read-only until the old primary
# is demoted, so both checks would pass at once on two nodes otherwise).
CHECK_RW = """\
#!/bin/sh
# HAProxy external check: $3 $4 are the server's address and port.
[ "$(psql "postgres://postgres@$3:$4/postgres?connect_timeout=1" -XAtc 'SHOW transaction_read_only' 2>/dev/null)" = off ]
"""


def monitor_uri_in(text: str) -> str:
    """The first postgres:// URI in `pg_autoctl show uri`'s table ("" when none)."""
    found = re.search(r"postgres://[^ \n]*", text)
    return found.group(0) if found else ""


def primary_in(table: str) -> str | None:
    """The node (node1 or node2) of the first row of `pg_autoctl show state` whose reported and
    assigned states (the 6th and 7th columns) both say primary; None when there is none."""
    for line in table.splitlines():
        columns = line.split("|")
        if len(columns) >= 7 and "primary" in columns[5] and "primary" in columns[6]:
            return {"node_1": "node1", "node_2": "node2"}.get(columns[0].replace(" ", ""))
    return None


def first_node_in(table: str) -> bool:
    """Whether node1 is registered as the formation's first node: reported and assigned "single"
    (alone; a lone node is never "primary"), or primary already."""
    for line in table.splitlines():
        columns = [column.strip() for column in line.split("|")]
        if len(columns) >= 7 and columns[0] == "node_1" and columns[5] == columns[6] == "single":
            return True
    return primary_in(table) == "node1"


def healthy_in(table: str) -> bool:
    """Whether `pg_autoctl show state` reports exactly one primary and one secondary, each in the
    state it is assigned."""

    def rows(state: str) -> int:
        pattern = re.compile(rf"\|\s+{state}\s+\|\s+{state}\s*$")
        return sum(1 for line in table.splitlines() if pattern.search(line))

    return rows("primary") == 1 and rows("secondary") == 1


def ensure_installed() -> None:
    """Installs PostgreSQL 15, pg_auto_failover and HAProxy (Debian's) when one is missing."""
    if not (shutil.which("pg_autoctl") and os.access(f"{BIN}/initdb", os.X_OK) and shutil.which("haproxy")):
        apt_install("deploy/pg-ha: installing postgresql-15-auto-failover and haproxy (Debian packages)",
                    ["postgresql-15", "postgresql-15-auto-failover", "haproxy"])


class Pair:
    """The HA pair kept in DIR."""

    def __init__(self, dir: Path):
        self.dir = dir

    def as_pg(self, command: list[str]) -> list[str]:
        """`command` as `postgres` with PostgreSQL 15 first on PATH. pg_autoctl keeps each node's
        configuration and state under XDG_CONFIG_HOME / XDG_DATA_HOME, keyed by the data
        directory's path: kept inside DIR, so that `down` leaves nothing behind and a new cluster
        in the same place does not find the old one's state."""
        xdg = self.dir / "xdg"
        return as_postgres(["env", f"XDG_CONFIG_HOME={xdg}/config", f"XDG_DATA_HOME={xdg}/data",
                            f"XDG_RUNTIME_DIR={xdg}/run", f"PATH={BIN}:{os.environ.get('PATH', '')}", *command])

    def port_of(self, name: str) -> str:
        """The port of `rw` (the read-write listener), `monitor`, `node1` or `node2`."""
        return (self.dir / f"{name}.port").read_text().strip()

    def url(self) -> str:
        """The database URL: the read-write listener's."""
        return f"postgres://postgres@127.0.0.1:{self.port_of('rw')}/postgres"

    def shown(self, what: str) -> subprocess.CompletedProcess:
        """`pg_autoctl show WHAT` of the monitor (bounded: 30 s)."""
        command = self.as_pg(["pg_autoctl", "show", what, "--pgdata", f"{self.dir}/monitor"])
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(command, 1, "", "")

    def monitor_uri(self) -> str:
        """The monitor's URI, as its nodes reach it ("" while it does not answer)."""
        return monitor_uri_in(self.shown("uri").stdout)

    def state_table(self) -> str:
        """`pg_autoctl show state`: one row per node ("" while the monitor does not answer)."""
        return self.shown("state").stdout

    def primary(self) -> str | None:
        """The node that is primary now, or None."""
        return primary_in(self.state_table())

    def wait_healthy(self) -> None:
        """Until one primary and one secondary are reported (120 s at most; then a failure with the table)."""
        try:
            wait_until(lambda: healthy_in(self.state_table()), 120, "a healthy pair", interval=0.5, ignoring=())
        except WaitTimeout:
            table = self.state_table().rstrip()
            raise Failed(f"deploy/pg-ha: no healthy primary and secondary after 120 s:\n{table}") from None

    def keeper(self, name: str) -> int | None:
        """The process group of NAME's keeper (recorded when it was started), while it runs."""
        pid = pid_in(self.dir / f"{name}.pid")
        pattern = rf"pg_autoctl (run|create (postgres|monitor)) --pgdata {re.escape(f'{self.dir}/{name}')}( |$)"
        return pid if alive(pid) and re.search(pattern, command_line(pid)) else None

    def postmaster(self, name: str) -> int | None:
        """The postmaster of NAME's data directory, while it runs."""
        pid = pid_in(self.dir / name / "postmaster.pid")
        pattern = rf"-D {re.escape(f'{self.dir}/{name}')}( |$)"
        return pid if alive(pid) and re.search(pattern, command_line(pid)) else None

    def run_detached(self, name: str, command: list[str]) -> None:
        """Runs `pg_autoctl` for one node in the background, as its own process group (its keeper
        supervises the node's postgres); the group's PID goes to DIR/NAME.pid."""
        with open(self.dir / f"{name}.log", "ab") as log:
            keeper = subprocess.Popen(self.as_pg(command), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                      start_new_session=True)
        (self.dir / f"{name}.pid").write_text(f"{keeper.pid}\n")

    def start_node(self, node: str) -> None:
        """Runs NODE's keeper: `pg_autoctl run` when its data exists, else `create postgres --run`."""
        data = f"{self.dir}/{node}"
        if (self.dir / node / "PG_VERSION").is_file():
            self.run_detached(node, ["pg_autoctl", "run", "--pgdata", data])
        else:
            self.run_detached(node, ["pg_autoctl", "create", "postgres", "--pgdata", data, "--pgport",
                                     self.port_of(node), "--hostname", "127.0.0.1", "--auth", "trust", "--no-ssl",
                                     "--monitor", self.monitor_uri(), "--run"])

    def write_haproxy(self) -> None:
        """DIR/haproxy.cfg, the read-write listener, and DIR/check-rw, its check."""
        (self.dir / "check-rw").write_text(CHECK_RW)
        (self.dir / "check-rw").chmod(0o755)
        (self.dir / "haproxy.cfg").write_text(f"""\
global
    pidfile {self.dir}/haproxy.pid
    external-check
    insecure-fork-wanted

defaults
    mode tcp
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    timeout check 2s

# The read-write listener: the first server whose check passes takes every connection; when it is
# marked down its sessions are shut down, so clients reconnect to the new primary at once.
listen postgres_rw
    bind 127.0.0.1:{self.port_of('rw')}
    balance first
    option external-check
    external-check path "/usr/bin:/bin"
    external-check command {self.dir}/check-rw
    default-server inter 500ms fall 2 rise 2 on-marked-down shutdown-sessions
    server node1 127.0.0.1:{self.port_of('node1')} check
    server node2 127.0.0.1:{self.port_of('node2')} check
""")

    def _prepare(self, rw_port: str | None) -> None:
        """DIR and its ports: the read-write listener's (RW_PORT, else a free one) and one per server."""
        for sub in ("xdg/config", "xdg/data", "xdg/run"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "xdg" / "run").chmod(0o700)
        give_to_postgres(*[self.dir, *self.dir.rglob("*")])
        self.dir.chmod(0o755)
        if not (self.dir / "rw.port").is_file():
            (self.dir / "rw.port").write_text(f"{rw_port or free_port()}\n")
        for name in ("monitor", *NODES):
            if not (self.dir / f"{name}.port").is_file():
                (self.dir / f"{name}.port").write_text(f"{free_port()}\n")

    def _start_monitor(self) -> None:
        """The monitor, created when new, running, answering and tuned (the timeouts above)."""
        if not (self.dir / "monitor" / "PG_VERSION").is_file():
            log = self.dir / "monitor-create.log"
            with open(log, "wb") as out:
                created = subprocess.run(self.as_pg(
                    ["pg_autoctl", "create", "monitor", "--pgdata", f"{self.dir}/monitor", "--pgport",
                     self.port_of("monitor"), "--hostname", "127.0.0.1", "--auth", "trust", "--no-ssl"]),
                    stdout=out, stderr=subprocess.STDOUT)
            if created.returncode != 0:
                raise Failed(log.read_text(errors="replace").rstrip("\n"))
        if not alive(pid_in(self.dir / "monitor.pid")):
            self.run_detached("monitor", ["pg_autoctl", "run", "--pgdata", f"{self.dir}/monitor"])

        def answering() -> bool:
            uri = self.monitor_uri()
            return bool(uri) and answers(uri)

        # Bounded by 30 s (100 tries 0.2 s apart, each asking pg_autoctl and psql, took longer than
        # 20 s); not answering by then, the tuning below fails and says why.
        with suppress(WaitTimeout):
            wait_until(answering, 30, "the monitor", interval=0.2, ignoring=())
        subprocess.run(["psql", f"postgres://postgres@127.0.0.1:{self.port_of('monitor')}/pg_auto_failover",
                        "-XAtq"], input=MONITOR_SETTINGS, text=True, stdout=subprocess.DEVNULL, check=True)

    def up(self, rw_port: str | None = None) -> str:
        """Starts whatever of the pair is not running; returns the database URL."""
        ensure_installed()
        self._prepare(rw_port)
        self._start_monitor()
        for node in NODES:
            if not alive(pid_in(self.dir / f"{node}.pid")):
                self.start_node(node)
                if node == "node1":  # The first node must be registered before the second joins.
                    with suppress(WaitTimeout):
                        wait_until(lambda: first_node_in(self.state_table()), 120, "node1 registered",
                                   interval=0.5, ignoring=())
        self.wait_healthy()
        for node in NODES:
            subprocess.run(self.as_pg(["pg_autoctl", "config", "set", "--pgdata", f"{self.dir}/{node}",
                                       "timeout.network_partition_timeout", "5"]),
                           stdout=subprocess.DEVNULL, check=True)
        self.write_haproxy()
        if not alive(pid_in(self.dir / "haproxy.pid")):
            subprocess.run(["haproxy", "-D", "-f", f"{self.dir}/haproxy.cfg"], check=True)
        url = self.url()
        with suppress(WaitTimeout):
            wait_until(lambda: answers(url), 10, "the read-write listener", interval=0.1, ignoring=())
        (self.dir / "url").write_text(url + "\n")
        return url

    def down(self) -> None:
        """Stops HAProxy, the nodes and the monitor (each keeper's process group and its postmaster,
        by the PIDs recorded) and deletes DIR."""
        signal_each([pid for pid in [pid_in(self.dir / "haproxy.pid")] if pid], signal.SIGTERM)
        for name in (*NODES, "monitor"):
            if (self.dir / name).is_dir():
                with suppress(subprocess.TimeoutExpired):
                    subprocess.run(self.as_pg(["pg_autoctl", "stop", "--pgdata", f"{self.dir}/{name}", "--immediate"]),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
            keeper = self.keeper(name)
            if keeper is not None:
                with suppress(ProcessLookupError):
                    os.killpg(keeper, signal.SIGKILL)
            postmaster = self.postmaster(name)
            if postmaster is not None:
                signal_each([postmaster], signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)

    def crash_primary(self) -> str:
        """kill -9 of the primary's keeper group, its postmaster and its backends; returns the node.
        The backends are in groups of their own: listed before the postmaster dies (they would be
        reparented), killed in the same instant."""
        node = self.primary()
        if node is None:
            raise Failed()
        keeper = self.keeper(node)
        if keeper is None:
            raise Failed(f"deploy/pg-ha: {node} has no running keeper")
        postmaster = self.postmaster(node)
        backends = children(postmaster) if postmaster else []
        with suppress(ProcessLookupError):
            os.killpg(keeper, signal.SIGKILL)
        signal_each([pid for pid in [postmaster, *backends] if pid], signal.SIGKILL)
        return node

    def restart(self, node: str) -> None:
        """Starts NODE again after a crash (its stale postmaster.pid removed); it rejoins as a standby."""
        (self.dir / node / "postmaster.pid").unlink(missing_ok=True)
        self.start_node(node)


def run(command: str, pair: Pair, arg: str) -> int | None:
    """One command of `deploy/pg-ha` (see the module's docstring)."""
    match command:
        case "up":
            print(pair.up(arg or None))
        case "down":
            pair.down()
        case "url":
            print((pair.dir / "url").read_text().strip())
        case "state":
            shown = pair.shown("state")
            print(shown.stdout, end="")
            return shown.returncode
        case "primary":
            node = pair.primary()
            if node is None:
                return 1
            print(node)
        case "wait-healthy":
            pair.wait_healthy()
        case "switchover":
            with open(pair.dir / "switchover.log", "ab") as log:
                subprocess.run(pair.as_pg(["pg_autoctl", "perform", "switchover", "--pgdata", f"{pair.dir}/monitor"]),
                               stdout=log, stderr=log, check=True)
        case "crash-primary":
            print(pair.crash_primary())
        case "restart":
            pair.restart(arg)
    return None


COMMANDS = ("up", "down", "url", "state", "primary", "wait-healthy", "switchover", "crash-primary", "restart")


def main(argv: list[str]) -> int:
    """`deploy/pg-ha COMMAND DIR [PORT]` or `deploy/pg-ha restart NODE DIR`; 2 and the usage for a
    wrong command line."""
    command, first, second = (argv + ["", "", ""])[:3]
    dir, arg = (second, first) if command == "restart" else (first, second)
    if command not in COMMANDS or not dir or (command == "restart" and not arg):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    return exit_status("deploy/pg-ha", lambda: run(command, Pair(Path(dir)), arg))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
