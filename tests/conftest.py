"""Shared fixtures: free ports, sample studies, the node as a subprocess, dcmtk's storescu,
the real-data folder, conformance checks (dciodvfy, DS/IS lengths), and the fault table."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom.dataset import Dataset

STORESCU = "/usr/bin/storescu"  # dcmtk's; pynetdicom installs a same-named script on PATH
ECHOSCU = "/usr/bin/echoscu"
DCMSEND = "/usr/bin/dcmsend"
DCIODVFY = Path("/usr/bin/dciodvfy")
UMSREP = [sys.executable, "-m", "pacs_node.cli"]
SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
MAX_LENGTH = {"DS": 16, "IS": 12}  # PS3.5 6.2


def shared_data(*parts: str) -> Path:
    """A folder of ../shared/data (read-only real data, never committed); skips without it."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.is_dir():
        pytest.skip(f"real data not here: {path} is absent (see ../shared/data/README.md)")
    return path


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's error lines about a file (its warnings are not errors)."""
    if not DCIODVFY.exists():
        pytest.skip("dicom3tools' dciodvfy is not installed")
    result = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True,
                            errors="replace",  # it prints names in their own repertoire
                            timeout=60, check=False)
    return [line for line in (result.stdout + result.stderr).splitlines()
            if line.startswith("Error")]


def overlong_values(ds: Dataset) -> list[str]:
    """DS and IS values longer than their VR allows, in `ds` and its sequences."""
    found = []
    for element in ds.iterall():
        limit = MAX_LENGTH.get(element.VR)
        values = element.value if element.VM > 1 else [element.value]
        found += [f"{element.keyword or element.tag} {value}" for value in values
                  if limit is not None and value is not None and len(str(value)) > limit]
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0, proc: subprocess.Popen[Any] | None = None,
                  echo_ae: str | None = None, calling_ae: str = "ECHOSCU") -> None:
    """Wait until the port listens; with `echo_ae`, until a C-ECHO to that AE succeeds.

    A bare TCP probe makes a pynetdicom SCP hold an association slot until its ACSE
    timeout (it waits for an A-ASSOCIATE-RQ that never comes); a C-ECHO releases properly.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        if echo_ae is not None:
            echo = subprocess.run([ECHOSCU, "-aet", calling_ae, "-aec", echo_ae, "127.0.0.1",
                                   str(port)],
                                  capture_output=True, timeout=30)
            if echo.returncode == 0:
                return
        else:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout} s")


def storescu(port: int, paths: list[Path], *, aec: str = "UMSREP", aet: str = "TESTSCU",
             extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STORESCU, "-aet", aet, "-aec", aec, *extra, "127.0.0.1", str(port),
                           *map(str, paths)], capture_output=True, text=True, timeout=120)


@dataclass
class ServedNode:
    proc: subprocess.Popen[str]
    port: int
    data_dir: Path
    config_path: Path
    log_path: Path

    def umsrep(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*UMSREP, *args], capture_output=True, text=True, timeout=60)

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)


def node_config(data_dir: Path, port: int, **sections: Any) -> dict[str, Any]:
    """A config for a test node: the defaults' routing, loopback callers, given overrides."""
    from pacs_node.config import DEFAULTS_FILE

    config = yaml.safe_load(DEFAULTS_FILE.read_text())
    config["node"].update(port=port, data_dir=str(data_dir), min_free_disk_mb=0)
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(name), dict):
            config[name] = {**config[name], **value}
        else:
            config[name] = value
    return config


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """Start `umsrep serve` as a subprocess: serve(**config sections) -> ServedNode."""
    nodes: list[ServedNode] = []

    def start(config: dict[str, Any] | None = None, *, data_dir: Path | None = None,
              port: int | None = None) -> ServedNode:
        port = port or free_port()
        data_dir = data_dir or tmp_path / "data"
        config = config or node_config(data_dir, port)
        config["node"]["port"] = port
        config["node"]["data_dir"] = str(data_dir)
        config_path = tmp_path / f"config-{len(nodes)}.yaml"
        config_path.write_text(yaml.safe_dump(config))
        log_path = tmp_path / f"node-{len(nodes)}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(log_path, "w") as log:
            proc = subprocess.Popen([*UMSREP, "serve", "--config", str(config_path)],
                                    stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
        node = ServedNode(proc, port, data_dir, config_path, log_path)
        nodes.append(node)
        plain = config["node"].get("tls") is None
        caller = (config["node"].get("callers") or [{}])[0].get("ae_title", "*")
        wait_for_port(port, proc=proc, echo_ae=config["node"]["ae_titles"][0] if plain else None,
                      calling_ae="ECHOSCU" if caller == "*" else caller)
        return node

    yield start
    for node in nodes:
        node.stop(signal.SIGKILL if node.proc.poll() is None else signal.SIGTERM)


@pytest.fixture
def study_files(tmp_path: Path) -> Any:
    """study_files(kind, count, seed, **kw) -> list of written sample DICOM files."""
    from pacs_node import samples

    def write(kind: str = "cr", count: int = 1, seed: int = 0, **kw: Any) -> list[Path]:
        kw.setdefault("rows", 256)
        kw.setdefault("columns", 256)
        out = tmp_path / f"samples-{kind}-{seed}"
        return samples.write_study(out, kind, seed, count, **kw)

    return write


def wait_until(predicate: Any, timeout: float = 20.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout} s")


# --- the fault table (README: Reliability) -------------------------------------------------

FAULT_ROWS: list[tuple[str, str, str]] = []


@pytest.fixture
def fault_table() -> Callable[..., None]:
    """fault_table(fault, outcome, **figures): a row of the table of faults that the run prints
    at its end: what was done to the node, what it did, the figures measured. Called at the
    end of a test, after its checks, so that only what held is printed."""
    def row(fault: str, outcome: str, **figures: object) -> None:
        FAULT_ROWS.append((fault, outcome, "; ".join(
            f"{name.replace('_', ' ')} {value}" for name, value in figures.items())))

    return row


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FAULT_ROWS:
        return
    terminalreporter.section("faults: what the node did (README, Reliability)")
    terminalreporter.write_line("| fault | what the node did | measured |")
    terminalreporter.write_line("|---|---|---|")
    for fault, outcome, figures in FAULT_ROWS:
        terminalreporter.write_line(f"| {fault} | {outcome} | {figures} |")
