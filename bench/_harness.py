"""What the node benchmarks share: free ports, `umsrep serve`, Orthanc, Redis, Celery workers,
dcmtk's storescu, and read-only looks into the node's journal.

Every service is a subprocess of its own session on loopback ports picked free, logging to a
file in the benchmark's work folder, and stopped with SIGTERM (then SIGKILL) on the way out.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

STORESCU = "/usr/bin/storescu"  # dcmtk's; pynetdicom installs a same-named script on PATH
ECHOSCU = "/usr/bin/echoscu"
ORTHANC = "/usr/sbin/Orthanc"
REDIS_SERVER = "/usr/bin/redis-server"
CALLING_AE = "BENCH"
NODE_AE = "UMSREP"
ORTHANC_AE = "ORTHANC"

T = TypeVar("T")


class BenchError(Exception):
    pass


# --- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(predicate: Callable[[], T], timeout: float, what: str,
               interval: float = 0.02) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise BenchError(f"{what}: not within {timeout:g} s")


def tail(path: Path, lines: int = 8) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])


@contextlib.contextmanager
def process(command: list[str], log: Path, env: dict[str, str] | None = None
            ) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                                start_new_session=True)
    try:
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def echo(port: int, called_ae: str) -> bool:
    """A C-ECHO: the AE is really up (a bare TCP probe would hold a pynetdicom slot)."""
    done = subprocess.run([ECHOSCU, "-aet", CALLING_AE, "-aec", called_ae, "-to", "5",
                           "127.0.0.1", str(port)], capture_output=True, timeout=30,
                          check=False)
    return done.returncode == 0


def wait_echo(proc: subprocess.Popen[bytes], port: int, called_ae: str, log: Path,
              timeout: float = 120.0) -> None:
    def ready() -> bool:
        if proc.poll() is not None:
            raise BenchError(f"exited with {proc.returncode} before it was ready:\n{tail(log)}")
        return echo(port, called_ae)

    wait_until(ready, timeout, f"{called_ae} on port {port}", interval=0.2)


def storescu(port: int, files: list[Path], called_ae: str = NODE_AE) -> None:
    """Send `files` in one association; raises unless every C-STORE succeeded."""
    done = subprocess.run([STORESCU, "-aet", CALLING_AE, "-aec", called_ae, "127.0.0.1",
                           str(port), *map(str, files)], capture_output=True, text=True,
                          timeout=600, check=False)
    if done.returncode != 0:
        lines = (done.stdout + done.stderr).strip().splitlines()[-6:]
        raise BenchError(f"storescu exited with {done.returncode}:\n" + "\n".join(lines))


# --- the node -------------------------------------------------------------------------------


def node_config(data_dir: Path, destinations: dict[str, Any], rule: dict[str, Any],
                broker: str | None = None) -> dict[str, Any]:
    """One process rule for CR/DX, everything else stored only; no quiet-timer completion
    within a benchmark (an hour), so a study completes only where its content says so."""
    config: dict[str, Any] = {
        "node": {"ae_titles": [NODE_AE], "bind": "127.0.0.1", "port": 0,
                 "data_dir": str(data_dir), "min_free_disk_mb": 0},
        "destinations": destinations,
        "routing": {"apply": "first", "quiet_seconds": 3600,
                    "rules": [rule, {"name": "store-only", "ignore": {}}]},
    }
    if broker is not None:
        config["broker"] = {"url": broker}
    return config


@dataclass
class Node:
    port: int
    data_dir: Path
    config_path: Path
    log: Path
    proc: subprocess.Popen[bytes]


def umsrep() -> list[str]:
    script = ROOT / ".venv" / "bin" / "umsrep"
    return [str(script)] if script.exists() else [sys.executable, "-m", "pacs_node.cli"]


@contextlib.contextmanager
def node(work: Path, config: dict[str, Any], name: str = "node") -> Iterator[Node]:
    """`umsrep serve` with `config` (its port replaced by a free one), ready for C-STOREs."""
    port = free_port()
    config["node"]["port"] = port
    config_path = work / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log = work / f"{name}.log"
    with process([*umsrep(), "serve", "--config", str(config_path)], log) as proc:
        wait_echo(proc, port, NODE_AE, log)
        yield Node(port, Path(config["node"]["data_dir"]), config_path, log, proc)


# --- the PACS -------------------------------------------------------------------------------


@dataclass
class Orthanc:
    dicom_port: int
    http_port: int

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}",
                                    timeout=10) as reply:
            return json.loads(reply.read())

    def post(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}",
                                         data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=10) as reply:
            return json.loads(reply.read())

    def modalities(self, study_uid: str) -> set[str]:
        """The modalities of the series Orthanc holds for a study."""
        series = self.post("/tools/find", {"Level": "Series", "Expand": True,
                                           "Query": {"StudyInstanceUID": study_uid}})
        return {s["MainDicomTags"].get("Modality", "") for s in series}

    @property
    def destination(self) -> dict[str, Any]:
        return {"ae_title": ORTHANC_AE, "host": "127.0.0.1", "port": self.dicom_port}


@contextlib.contextmanager
def orthanc(work: Path) -> Iterator[Orthanc]:
    """Orthanc (Debian package) with its index and storage under `work`, no plugins."""
    pacs = Orthanc(free_port(), free_port())
    config = {"Name": "umsrep-bench-pacs", "StorageDirectory": str(work / "orthanc-db"),
              "IndexDirectory": str(work / "orthanc-db"), "DicomAet": ORTHANC_AE,
              "DicomPort": pacs.dicom_port, "HttpPort": pacs.http_port,
              "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
              "DicomCheckCalledAet": False, "Plugins": []}
    path = work / "orthanc.json"
    path.write_text(json.dumps(config))
    log = work / "orthanc.log"
    with process([ORTHANC, str(path)], log) as proc:
        wait_echo(proc, pacs.dicom_port, ORTHANC_AE, log)
        yield pacs


# --- Redis and Celery -----------------------------------------------------------------------


@contextlib.contextmanager
def redis_server(work: Path) -> Iterator[str]:
    """A redis-server of the benchmark's own on a free port, keeping nothing on disk."""
    port = free_port()
    log = work / "redis.log"
    with process([REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "no", "--dir", str(work)], log) as proc:
        def up() -> bool:
            if proc.poll() is not None:
                raise BenchError(f"redis-server exited:\n{tail(log)}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return True
            return False

        wait_until(up, 30, "redis-server", interval=0.05)
        yield f"redis://127.0.0.1:{port}/0"


@contextlib.contextmanager
def celery_worker(work: Path, config_path: Path, broker: str, processes: int, *,
                  env: dict[str, str] | None = None, queue: str = "cxr"
                  ) -> Iterator[subprocess.Popen[bytes]]:
    """`celery -A workers.app worker -Q QUEUE -c N`, configured as the node it serves."""
    name = f"bench-c{processes}-{os.getpid()}@%h"
    log = work / f"worker-c{processes}.log"
    command = [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", queue,
               "-c", str(processes), "-n", name, "-l", "info", "--without-gossip",
               "--without-mingle"]
    with process(command, log, {"UMSREP_CONFIG": str(config_path),
                                "UMSREP_BROKER_URL": broker, **(env or {})}) as proc:
        wait_until(lambda: "ready." in tail(log, 40) or proc.poll() is not None, 120,
                   "celery worker ready", interval=0.2)
        if proc.poll() is not None:
            raise BenchError(f"celery worker exited with {proc.returncode}:\n{tail(log)}")
        yield proc


# --- the journal ----------------------------------------------------------------------------


def query(data_dir: Path, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """Rows of the node's journal, read-only (the node and workers keep writing)."""
    db = data_dir / "journal.db"
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, args).fetchall()]
    finally:
        conn.close()


_SECONDS = re.compile(r"(\d+(?:\.\d+)?) s(?:,|$)")


def note_seconds(detail: str | None) -> float | None:
    """The duration a pipeline timing note records ("0.042 s", "0.120 s, 2 objects")."""
    found = _SECONDS.search(detail or "")
    return float(found.group(1)) if found else None
