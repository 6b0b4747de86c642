"""Starting `leasehold serve` replicas: the one place that builds a replica's environment and
launches it. The local cluster, the test fixtures, the drills' and the fault run's extra replicas
and the benchmarks all start their replicas here. Standard library only.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from . import procs


def replica_env(replica_id: str, port: int, database_url: str, host: str = "127.0.0.1",
                settings: Mapping[str, str] | None = None) -> dict[str, str]:
    """The LEASEHOLD_* variables of a cluster replica: where it listens and is reached, its id, its
    database, `settings` (other LEASEHOLD_* names: the lease TTL, the idle timeout) and JSON logs.
    The same names as a replica of deploy/docker-compose.yml (a test compares them)."""
    env = {
        "LEASEHOLD_HOST": host,
        "LEASEHOLD_PORT": str(port),
        "LEASEHOLD_REPLICA_ID": replica_id,
        "LEASEHOLD_ADVERTISE_ADDRESS": f"http://{host}:{port}",
        "LEASEHOLD_DATABASE_URL": database_url,
    }
    env.update(settings or {})
    env["LEASEHOLD_LOG_FORMAT"] = "json"
    return env


def environment(env: Mapping[str, str] | None = None, inherit: bool = False) -> dict[str, str]:
    """A replica's whole environment: this process's without its LEASEHOLD_* names (so that a
    setting of the caller's cannot leak into a replica; `inherit` keeps them), plus `env`."""
    whole = {k: v for k, v in os.environ.items() if inherit or not k.startswith("LEASEHOLD_")}
    whole.update(env or {})
    return whole


def launch(log: Path, env: Mapping[str, str] | None = None, args: Sequence[object] = (), *,
           binary: str | None = None, wrapper: Sequence[str] = (), inherit: bool = False,
           truncate: bool = False) -> subprocess.Popen:
    """Starts `BINARY serve ARGS` (default binary: `procs.binary()`, i.e. LH_BIN) with
    `environment(env, inherit)`, stdin closed and stdout and stderr appended to `log` (written
    anew with `truncate`). `wrapper` goes before the binary (`ip netns exec NS`). Returns at once;
    the caller waits for readiness and stops it."""
    command = [*wrapper, binary or procs.binary(), "serve", *map(str, args)]
    with open(log, "wb" if truncate else "ab") as out:
        return subprocess.Popen(command, env=environment(env, inherit), stdin=subprocess.DEVNULL,
                                stdout=out, stderr=out)
