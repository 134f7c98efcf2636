"""Hosts made of Linux namespaces, for tests and benchmarks that need a node and workers on
different machines with nothing shared but the network.

The machine the test runs on plays the hospital network (dcmtk storescu, Orthanc as the
PACS). Each `Host` is a network namespace linked to the node host by a veth pair of its own:

    hospital 10.231.0.1 --- 10.231.0.2  node host (umsrep serve, redis-server, its data)
                                10.231.N.1 --- 10.231.N.2  worker host N (a Celery worker)

Every program of a host runs in the host's network namespace and in a mount namespace of its
own, where an empty tmpfs lies over each other host's folder: a worker cannot see the node's
data directory, only reach the node over the network. Needs root (CAP_SYS_ADMIN and
CAP_NET_ADMIN); `Lab.check()` says why not, where it cannot.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

IP = "/usr/sbin/ip"
HOSPITAL = "10.231.0.1"
NODE = "10.231.0.2"


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30)


@dataclass
class Host:
    name: str  # its network namespace
    root: Path  # its own folder: what it writes lives here
    link: str  # its interface towards the node host (the hospital's, for the node host)
    hidden: list[Path] = field(default_factory=list)  # other hosts' folders
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def command(self, argv: list[str], cpus: str | None = None) -> list[str]:
        """`argv` as run on this host: its network, its view of the file system, and, with
        `cpus`, only those cores (a host of its own has cores of its own)."""
        covers = "".join(f"mount -t tmpfs -o size=1m,mode=0700 elsewhere {shlex.quote(str(p))}"
                         " && " for p in self.hidden)
        pinned = ["taskset", "-c", cpus] if cpus else []
        return [IP, "netns", "exec", self.name, "unshare", "--mount", "--", "sh", "-c",
                covers + 'exec "$@"', "sh", *pinned, *argv]

    def start(self, argv: list[str], log: Path, env: dict[str, str] | None = None,
              cpus: str | None = None) -> subprocess.Popen[bytes]:
        """A program of this host, in a session of its own (killed with all its children)."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(self.command(argv, cpus), stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        self.procs.append(proc)
        return proc

    def run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(argv), capture_output=True, text=True, timeout=60)

    def kill(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        """The program and every process it started, as a host going down would."""
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def cut(self) -> None:
        """Its cable out: nothing reaches it or leaves it until `mend`."""
        _run(IP, "-n", self.name, "link", "set", self.link, "down")

    def mend(self) -> None:
        _run(IP, "-n", self.name, "link", "set", self.link, "up")


class Lab:
    """The node host and worker hosts, made by `up()` and removed by `down()`."""

    def __init__(self, root: Path) -> None:
        self.prefix = f"u{os.getpid() % 100000}"  # interface names: 15 characters at most
        self.root = root
        self.node = Host(f"{self.prefix}-node", root / "node", "hosp0")
        self.workers: list[Host] = []

    @staticmethod
    def check() -> str | None:
        """Why namespaces cannot be made here, or None when they can."""
        probe = f"u{os.getpid() % 100000}-probe"
        try:
            _run(IP, "netns", "add", probe)
            _run(IP, "netns", "exec", probe, "unshare", "--mount", "--", "mount", "-t",
                 "tmpfs", "probe", "/mnt")
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            return f"cannot create network and mount namespaces here (root needed): {detail}"
        finally:
            subprocess.run([IP, "netns", "del", probe], capture_output=True, check=False)
        return None

    def up(self, workers: int) -> None:
        self.node.root.mkdir(parents=True, exist_ok=True)
        self._namespace(self.node.name)
        # The hospital's cable: this machine's end keeps the hospital's address.
        outside = f"{self.prefix}h"
        _run(IP, "link", "add", outside, "type", "veth", "peer", "name", "hosp0",
             "netns", self.node.name)
        _run(IP, "addr", "add", f"{HOSPITAL}/24", "dev", outside)
        _run(IP, "link", "set", outside, "up")
        self._address(self.node.name, "hosp0", f"{NODE}/24")
        for n in range(1, workers + 1):
            host = Host(f"{self.prefix}-w{n}", self.root / f"worker{n}", "node0")
            host.root.mkdir(parents=True, exist_ok=True)
            self._namespace(host.name)
            _run(IP, "-n", self.node.name, "link", "add", f"w{n}", "type", "veth", "peer",
                 "name", "node0", "netns", host.name)
            self._address(self.node.name, f"w{n}", f"10.231.{n}.1/24")
            self._address(host.name, "node0", f"10.231.{n}.2/24")
            self.workers.append(host)
        hosts = [self.node, *self.workers]
        for host in hosts:
            host.hidden = [h.root for h in hosts if h is not host]

    @staticmethod
    def node_address(worker: int) -> str:
        """The node host's address as worker host `worker` (1, 2...) reaches it."""
        return f"10.231.{worker}.1"

    def down(self) -> None:
        for host in [*self.workers, self.node]:
            for proc in host.procs:
                if proc.poll() is None:
                    host.kill(proc)
            subprocess.run([IP, "netns", "del", host.name], capture_output=True, check=False)
        # its peer went with the node's namespace; deleted here if that failed part-way
        subprocess.run([IP, "link", "del", f"{self.prefix}h"], capture_output=True,
                       check=False)

    @staticmethod
    def _namespace(name: str) -> None:
        _run(IP, "netns", "add", name)
        _run(IP, "-n", name, "link", "set", "lo", "up")

    @staticmethod
    def _address(namespace: str, device: str, cidr: str) -> None:
        _run(IP, "-n", namespace, "addr", "add", cidr, "dev", device)
        _run(IP, "-n", namespace, "link", "set", device, "up")
