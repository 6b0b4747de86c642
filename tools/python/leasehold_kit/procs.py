"""Running commands, finding loopback ports, the server binary the harness runs, and the
processes the harness started (by PID: their pid files, their command lines, stopping them).

Standard library only: the process-management modules (postgres, pg_ha, local_cluster) import it
and run on the system python3 before scripts/setup has made the venv.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable

from .waiting import WaitTimeout, wait_until

ROOT = Path(__file__).resolve().parents[3]


def binary() -> str:
    """The `leasehold` binary every harness runs: `LH_BIN`, else the debug build's (one variable)."""
    return os.environ.get("LH_BIN", str(ROOT / ".build" / "debug" / "leasehold"))


def sh(*args, timeout: float = 120, check: bool = True, **kw) -> str:
    """Runs a command; returns its stdout stripped. With `check`, a failure raises with its stderr."""
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, **kw)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return done.stdout.strip()


def free_port() -> int:
    """A loopback port free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Failed(Exception):
    """A harness command that cannot go on: `message` (for stderr; may be empty) and its exit status."""

    def __init__(self, message: str = "", status: int = 1):
        super().__init__(message)
        self.message, self.status = message, status


def exit_status(program: str, command: Callable[[], int | None]) -> int:
    """Runs the body of `program` (a command line) and returns its exit status, as its bash form's
    `set -e` did: a failed step's own status, a `Failed`'s message and status, 1 for a file it
    cannot read."""
    try:
        return command() or 0
    except Failed as failure:
        if failure.message:
            print(failure.message, file=sys.stderr)
        return failure.status
    except subprocess.CalledProcessError as failed:
        return failed.returncode
    except OSError as error:
        print(f"{program}: {error}", file=sys.stderr)
        return 1


def pid_in(path: Path) -> int | None:
    """The PID a pid file holds (its first line), or None when there is none."""
    try:
        return int(path.read_text().split("\n", 1)[0].strip())
    except (OSError, ValueError):
        return None


def alive(pid: int | None) -> bool:
    """Whether the process exists (a zombie does not count: it has exited, its parent not yet reaped it)."""
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def command_line(pid: int) -> str:
    """A process's command line, its arguments joined by spaces (what `pgrep -f` matches), or ""."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    """The PIDs whose parent is `pid` (`pgrep -P`)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def signal_each(pids: list[int], sig: int) -> None:
    """Sends `sig` to each PID; one that is gone already is skipped."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop_pid_file(path: Path, sig: int = signal.SIGTERM, grace: float = 15.0) -> None:
    """Stops the process a pid file names: `sig`, up to `grace` seconds for it to exit, then SIGKILL.
    The pid file is removed."""
    pid = pid_in(path)
    if alive(pid):
        signal_each([pid], sig)
        try:
            wait_until(lambda: not alive(pid), grace, f"process {pid} to exit", interval=0.1, ignoring=())
        except WaitTimeout:
            signal_each([pid], signal.SIGKILL)
    path.unlink(missing_ok=True)
