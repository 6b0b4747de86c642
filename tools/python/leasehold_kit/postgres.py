"""A throwaway PostgreSQL server on a free loopback port, for tests, drills and benchmarks.
`scripts/pg` runs this module (`python -m leasehold_kit.postgres`); standard library only.

    scripts/pg start DIR [--durable]   initdb into DIR (if new), start, print the database URL
                                        (--durable: fsync on, and pg_stat_statements loaded)
    scripts/pg stop DIR                stop it (the data stays in DIR)
    scripts/pg restart DIR             restart it on the same port (for drills)
    scripts/pg url DIR                 print the URL of a running server
    scripts/pg destroy DIR             stop and delete DIR
    scripts/pg listen DIR ADDR/BITS    also listen on ADDR, trusting clients in ADDR/BITS (restarts when new;
                                       for the partition drill's network namespace)
    scripts/pg standby DIR PRIMARY_DIR a streaming standby of the server in PRIMARY_DIR (pg_basebackup;
                                       asynchronous), started on a free port; prints its URL
    scripts/pg detach DIR              a standby stops receiving WAL (it lags from now on; for the
                                       test of a database that goes back in time)
    scripts/pg promote DIR             promote a standby (a new timeline)
    scripts/pg kill DIR                stop at once without a clean shutdown (a crash)
    scripts/pg clock DIR SECONDS       set the server's wall clock SECONDS (e.g. +3, -1.5, 0) off real time
                                       (libfaketime; the first call restarts the server under it; for the
                                       nemesis's clock steps). The offset survives restarts.

Installs Debian's postgresql package when no server binaries are found. Runs the server as the
non-root `postgres` user when invoked as root. Without --durable, fsync is off (tests only).
DIR holds data/ (the cluster), port, opts (the server's options), clock (when set), server.log and
initdb.log or basebackup.log.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
from pathlib import Path

from .procs import Failed, exit_status, free_port
from .waiting import WaitTimeout, wait_until

# Each command, and the argument after DIR it needs ("" when none).
COMMANDS = {"start": "", "stop": "", "restart": "", "url": "", "destroy": "", "listen": "ADDR/BITS",
            "standby": "PRIMARY_DIR", "detach": "", "promote": "", "kill": "", "clock": "SECONDS"}


def find_bin() -> str | None:
    """The first PostgreSQL installation's bin directory (/usr/lib/postgresql/*/bin with initdb)."""
    for path in sorted(Path("/usr/lib/postgresql").glob("*/bin")):
        if os.access(path / "initdb", os.X_OK):
            return str(path)
    return None


def bin_dir() -> str:
    """`find_bin()`, or a failure saying none is installed."""
    found = find_bin()
    if found is None:
        raise Failed("scripts/pg: no PostgreSQL server under /usr/lib/postgresql (scripts/setup installs it)")
    return found


def apt_install(saying: str, packages: list[str]) -> None:
    """Installs Debian packages, saying so on stderr (where apt-get's output goes too)."""
    print(saying, file=sys.stderr)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], stdout=sys.stderr, env=env, check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages], stdout=sys.stderr, env=env, check=True)


def ensure_installed() -> None:
    """Installs Debian's postgresql when no server binaries are found."""
    if find_bin() is None:
        apt_install("scripts/pg: installing postgresql (Debian package)", ["postgresql"])


def as_postgres(command: list[str]) -> list[str]:
    """`command` as the non-root `postgres` user when this runs as root (PostgreSQL refuses root)."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def give_to_postgres(*paths: Path) -> None:
    """`chown postgres:` when this runs as root (the user and its login group)."""
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        for path in paths:
            os.chown(path, user.pw_uid, user.pw_gid)


def faketime_lib() -> str:
    """libfaketime's path ("" when it is not installed)."""
    found = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
    return str(found[0]) if found else ""


def pg_ctl(dir: Path, *args: str) -> None:
    """pg_ctl ARGS as `postgres`, its output dropped, under libfaketime when DIR has a clock file
    (`clock`): the server and every backend it forks read their wall clock shifted by the file's
    offset (re-read each second); monotonic clocks are left alone. A failure raises."""
    command = [f"{bin_dir()}/pg_ctl", *args]
    if (dir / "clock").is_file():
        command = ["env", f"LD_PRELOAD={faketime_lib()}", f"FAKETIME_TIMESTAMP_FILE={dir}/clock",
                   "FAKETIME_CACHE_DURATION=1", "FAKETIME_DONT_FAKE_MONOTONIC=1", *command]
    subprocess.run(as_postgres(command), stdout=subprocess.DEVNULL, check=True)


def url(dir: Path) -> str:
    """The admin URL of DIR's server (its port file)."""
    return f"postgres://postgres@127.0.0.1:{(dir / 'port').read_text().strip()}/postgres"


def answers(database_url: str) -> bool:
    """Whether the server at the URL runs a query now (bounded: 10 s)."""
    try:
        done = subprocess.run(["psql", database_url, "-XAtc", "select 1"], capture_output=True, timeout=10)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def _own_dir(dir: Path) -> None:
    """DIR, made when missing, owned by `postgres`, private to it."""
    dir.mkdir(parents=True, exist_ok=True)
    give_to_postgres(dir)
    dir.chmod(0o700)


def _port(dir: Path) -> str:
    """DIR's port: the one it had, else a free one (written to DIR/port)."""
    try:
        port = (dir / "port").read_text().strip()
    except FileNotFoundError:
        port = ""
    port = port or str(free_port())
    (dir / "port").write_text(port + "\n")
    return port


def _launch(dir: Path, opts: str) -> str:
    """Starts the server of DIR with `opts` (written to DIR/opts); returns its URL. A server that
    does not start prints its log."""
    (dir / "opts").write_text(opts + "\n")
    give_to_postgres(dir / "port", dir / "opts")
    try:
        pg_ctl(dir, "-D", f"{dir}/data", "-o", opts, "-l", f"{dir}/server.log", "-w", "-t", "30", "start")
    except subprocess.CalledProcessError:
        raise Failed((dir / "server.log").read_text(errors="replace").rstrip("\n")) from None
    return url(dir)


def _logged(command: list[str], log: Path) -> None:
    """Runs `command` as `postgres` into `log`; on failure prints the log and fails."""
    with open(log, "wb") as out:
        done = subprocess.run(as_postgres(command), stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise Failed(log.read_text(errors="replace").rstrip("\n"))


def start(dir: Path, durable: bool = False) -> str:
    """initdb into DIR when new, start on DIR's port; returns the URL."""
    ensure_installed()
    bindir = bin_dir()
    _own_dir(dir)
    if not (dir / "data" / "PG_VERSION").is_file():
        _logged([f"{bindir}/initdb", "-D", f"{dir}/data", "-U", "postgres", "--auth=trust", "-E", "UTF8",
                 "--no-locale"], dir / "initdb.log")
    opts = f"-p {_port(dir)} -k {dir} -c listen_addresses=127.0.0.1 -c max_connections=300 -c shared_buffers=256MB"
    if not durable:
        opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c leasehold.allow_fsync_off=on"
    else:
        # Durable servers (benchmarks) also count statements: bench/run reads them per request.
        opts += " -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all"
    return _launch(dir, opts)


def stop(dir: Path) -> None:
    """A clean stop; the data stays. A server not running is no error."""
    subprocess.run(as_postgres([f"{bin_dir()}/pg_ctl", "-D", f"{dir}/data", "-m", "fast", "-w", "stop"]),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def restart(dir: Path) -> None:
    """A fast restart with DIR's options, on the same port."""
    opts = (dir / "opts").read_text().strip()
    pg_ctl(dir, "-D", f"{dir}/data", "-o", opts, "-l", f"{dir}/server.log", "-m", "fast", "-w", "-t", "30", "restart")


def listen(dir: Path, cidr: str) -> None:
    """An extra listen address (a veth of a network namespace a drill made), trusted from its subnet.
    Postgres binds what exists at start and warns about the rest, so a stale address is harmless."""
    addr = cidr.rsplit("/", 1)[0]
    bindir = bin_dir()
    changed = False
    opts = (dir / "opts").read_text()
    if not re.search(rf"listen_addresses=[^ ]*{re.escape(addr)}", opts):
        opts = re.sub(r"listen_addresses=[^ \n]*", lambda found: f"{found.group(0)},{addr}", opts, count=1)
        (dir / "opts").write_text(opts)
        changed = True
    hba = dir / "data" / "pg_hba.conf"
    if not any(line.startswith(f"host all all {cidr} trust") for line in hba.read_text().splitlines()):
        with open(hba, "a") as out:
            out.write(f"host all all {cidr} trust\n")
        changed = True
    port = (dir / "port").read_text().strip()
    if changed or subprocess.run(as_postgres([f"{bindir}/pg_isready", "-q", "-h", addr, "-p", port])).returncode != 0:
        restart(dir)


def clock(dir: Path, offset: str) -> None:
    """Sets DIR/clock to OFFSET seconds (signed); the first call restarts the server under libfaketime."""
    if not re.fullmatch(r"[+-]?[0-9]+(\.[0-9]+)?", offset):
        raise Failed("scripts/pg clock: SECONDS must be a number like +3, -1.5 or 0", 2)
    if not faketime_lib():
        raise Failed("scripts/pg clock: libfaketime is not installed (scripts/setup installs it)")
    offset = offset if offset[0] in "+-" else "+" + offset
    new = not (dir / "clock").is_file()
    (dir / "clock.tmp").write_text(offset + "\n")
    give_to_postgres(dir / "clock.tmp")
    os.replace(dir / "clock.tmp", dir / "clock")
    if new:
        restart(dir)


def standby(dir: Path, primary: Path) -> str:
    """A streaming standby of the server in PRIMARY on a port of its own; returns its URL."""
    bindir = bin_dir()
    _own_dir(dir)
    if not (dir / "data" / "PG_VERSION").is_file():
        # -R writes standby.signal and primary_conninfo; no synchronous_standby_names on the
        # primary, so the standby is asynchronous.
        primary_port = (primary / "port").read_text().strip()
        _logged([f"{bindir}/pg_basebackup", "-h", "127.0.0.1", "-p", primary_port, "-U", "postgres",
                 "-D", f"{dir}/data", "-R", "-X", "stream", "-c", "fast"], dir / "basebackup.log")
    port = _port(dir)
    opts = (primary / "opts").read_text().strip()
    opts = re.sub(r"-p [0-9]*", lambda _: f"-p {port}", opts, count=1)
    opts = re.sub(r"-k [^ ]*", lambda _: f"-k {dir}", opts, count=1)
    return _launch(dir, opts)


def detach(dir: Path) -> None:
    """The standby in DIR stops receiving WAL: primary_conninfo emptied, until its WAL receiver is gone."""
    database = url(dir)
    subprocess.run(["psql", database, "-XAtq", "-c", "ALTER SYSTEM SET primary_conninfo = ''",
                    "-c", "SELECT pg_reload_conf()"], stdout=subprocess.DEVNULL, check=True)

    def receivers() -> str:
        return subprocess.run(["psql", database, "-XAtc", "SELECT count(*) FROM pg_stat_wal_receiver"],
                              capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        wait_until(lambda: receivers() == "0", 30, "the WAL receiver to stop", interval=0.1,
                   ignoring=(subprocess.TimeoutExpired,))
    except WaitTimeout:
        raise Failed(f"scripts/pg detach: the WAL receiver of {dir} did not stop") from None


def promote(dir: Path) -> None:
    """The standby in DIR becomes a primary (a new timeline)."""
    subprocess.run(as_postgres([f"{bin_dir()}/pg_ctl", "-D", f"{dir}/data", "-w", "-t", "30", "promote"]),
                   stdout=subprocess.DEVNULL, check=True)


def kill(dir: Path) -> None:
    """An immediate stop, without a clean shutdown (a crash)."""
    subprocess.run(as_postgres([f"{bin_dir()}/pg_ctl", "-D", f"{dir}/data", "-m", "immediate", "-w", "stop"]),
                   stdout=subprocess.DEVNULL, check=True)


def destroy(dir: Path) -> None:
    """An immediate stop (when a server runs) and DIR deleted."""
    bindir = find_bin()
    if bindir is not None:
        subprocess.run(as_postgres([f"{bindir}/pg_ctl", "-D", f"{dir}/data", "-m", "immediate", "-w", "stop"]),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shutil.rmtree(dir, ignore_errors=True)


def run(command: str, dir: Path, arg: str) -> None:
    """One command of `scripts/pg` (see the module's docstring)."""
    match command:
        case "start":
            print(start(dir, durable=arg == "--durable"))
        case "standby":
            print(standby(dir, Path(arg)))
        case "url":
            print(url(dir))
        case "listen":
            listen(dir, arg)
        case "clock":
            clock(dir, arg)
        case _:
            {"stop": stop, "restart": restart, "detach": detach, "promote": promote, "kill": kill,
             "destroy": destroy}[command](dir)


def main(argv: list[str]) -> int:
    """`scripts/pg COMMAND DIR [ARG]`; 2 and the usage for a wrong command line."""
    command, dir, arg = (argv + ["", "", ""])[:3]
    if not command or not dir or command not in COMMANDS:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    if COMMANDS[command] and not arg:
        print(f"scripts/pg {command} DIR {COMMANDS[command]}", file=sys.stderr)
        return 2
    return exit_status("scripts/pg", lambda: run(command, Path(dir), arg))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
