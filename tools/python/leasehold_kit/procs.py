"""Running commands, finding loopback ports, and the server binary the harness runs."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

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
