"""A replica in its own network namespace, for partitions (the partition drill and the nemesis).

The namespace is joined to this host by a veth pair (iproute2; needs CAP_NET_ADMIN). The replica
inside reaches PostgreSQL over the veth; cutting the link drops every packet both ways at the
kernel (no reset, no error), as a real partition does. Only addresses the namespace itself made
(10.213.N.0/30) are used.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx

from .procs import sh
from .replicas import launch, replica_env
from .waiting import wait_until


class Namespace:
    def __init__(self, n: int):
        n %= 250
        self.name = f"lh-partition-{n}"
        self.host_if, self.ns_if = f"lhp{n}h", f"lhp{n}n"
        self.host_ip, self.ns_ip = f"10.213.{n}.1", f"10.213.{n}.2"
        self.subnet = f"10.213.{n}.0/30"

    @staticmethod
    def unavailable() -> str | None:
        """Why namespaces cannot be made here, or None."""
        probe = f"lh-probe-{os.getpid()}"
        try:
            done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
        except FileNotFoundError:
            return "iproute2 (ip) is not installed"
        if done.returncode != 0:
            return (f"network namespaces are unavailable here ({done.stderr.strip()}); "
                    "a partition needs root (CAP_NET_ADMIN) and iproute2")
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
        return None

    def create(self):
        self.delete()
        for step in (["ip", "netns", "add", self.name],
                     ["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if],
                     ["ip", "link", "set", self.ns_if, "netns", self.name],
                     ["ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if],
                     ["ip", "link", "set", self.host_if, "up"],
                     ["ip", "-n", self.name, "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if],
                     ["ip", "-n", self.name, "link", "set", self.ns_if, "up"],
                     ["ip", "-n", self.name, "link", "set", "lo", "up"],
                     # While the link is cut its connected route is gone: without this, packets for
                     # the namespace would follow the default route off the machine. A blackhole
                     # drops them silently instead, as a partition does.
                     ["ip", "route", "replace", "blackhole", f"{self.subnet}", "metric", "4000"]):
            sh(*step)

    def cut(self):
        sh("ip", "link", "set", self.host_if, "down")

    def heal(self):
        sh("ip", "link", "set", self.host_if, "up")

    def delete(self):
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)  # takes the veth pair with it
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "route", "del", "blackhole", self.subnet, "metric", "4000"], capture_output=True)


class PartitionableReplica:
    """One more replica of a local cluster, inside its own namespace, on the cluster's database.

    `cluster_dir` is the local cluster's LH_DIR (its PostgreSQL is told to listen on the veth too);
    `n` picks the namespace (one per cluster port). Environment of the replica: the cluster's
    settings passed in `settings` (LEASEHOLD_* names), plus its own address and id."""

    def __init__(self, root: Path, cluster_dir: Path, n: int, replica_id: str, settings: dict[str, str],
                 port: int = 8090):
        self.root, self.dir, self.replica_id, self.settings, self.port = root, cluster_dir, replica_id, settings, port
        self.ns = Namespace(n)
        self.proc: subprocess.Popen | None = None
        self.url = f"http://{self.ns.ns_ip}:{port}"

    def create(self):
        """Makes the namespace and lets PostgreSQL listen on its veth (a restart when that is new)."""
        self.ns.create()
        sh(self.root / "scripts" / "pg", "listen", self.dir / "pg", f"{self.ns.host_ip}/30", timeout=60)

    def start(self):
        pg_port = int(sh(self.root / "deploy" / "local-cluster", "url").rsplit(":", 1)[1].split("/")[0])
        env = replica_env(self.replica_id, self.port, f"postgres://postgres@{self.ns.host_ip}:{pg_port}/postgres",
                          host=self.ns.ns_ip, settings=self.settings)
        self.proc = launch(self.dir / f"{self.replica_id}.log", env, wrapper=["ip", "netns", "exec", self.ns.name])
        self.wait_ready()

    def wait_ready(self):
        wait_until(lambda: httpx.get(self.url + "/ready", timeout=1).status_code == 200, 60,
                   f"{self.replica_id} ready")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, delete: bool = True):
        if self.running():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if delete:
            self.ns.delete()
