"""Orthanc (Debian package `orthanc`) as the PACS, started on free ports per test."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, wait_for_port

ORTHANC = "/usr/sbin/Orthanc"


@dataclass
class Orthanc:
    dicom_port: int
    http_port: int
    proc: subprocess.Popen[bytes]

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}",
                                    timeout=10) as reply:
            return json.loads(reply.read())

    def instances(self) -> list[dict[str, Any]]:
        """Every stored instance's main DICOM tags."""
        return [self.get(f"/instances/{i}/simplified-tags") for i in self.get("/instances")]


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    dicom_port, http_port = free_port(), free_port()
    config = {
        "Name": "umsrep-test-pacs",
        "StorageDirectory": str(tmp_path / "orthanc-db"),
        "IndexDirectory": str(tmp_path / "orthanc-db"),
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "Plugins": [],
        "StableAge": 1,
    }
    config_path = tmp_path / "orthanc.json"
    config_path.write_text(json.dumps(config))
    proc = subprocess.Popen([ORTHANC, str(config_path)], stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "orthanc.log", "wb"))  # noqa: SIM115
    try:
        wait_for_port(http_port, timeout=30, proc=proc)
        wait_for_port(dicom_port, timeout=30, proc=proc, echo_ae="ORTHANC")
        yield Orthanc(dicom_port, http_port, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_for(predicate: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"not reached within {timeout} s")
