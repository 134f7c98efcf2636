"""The Celery path: the node sends the task through the machine's Redis, a real
`celery -A workers.app worker` runs it, and the outputs equal the embedded mode's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from pacs_node import samples
from tests.conftest import node_config, storescu, wait_until
from tests.unit.test_inference import tiny_bundle

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REDIS_URL = "redis://127.0.0.1:6379/14"


def config_with(tmp_path: Path, name: str, broker: bool) -> dict[str, Any]:
    bundle = tiny_bundle(tmp_path / "bundles", "cxr")
    raw = node_config(tmp_path / name, 0, routing={"quiet_seconds": 0.5, "rules": [
        {"name": "chest", "match": {"modality": ["CR"]},
         "process": {"pipeline": "cxr", "bundle": str(bundle), "destinations": ["results"]}}]})
    if broker:
        raw["broker"] = {"url": REDIS_URL}
    return raw


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[str]] = []

    def start(config_path: Path) -> subprocess.Popen[str]:
        env = {**os.environ, "UMSREP_CONFIG": str(config_path)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", "cxr",
             "-c", "1", "--loglevel", "INFO", "-n", f"test-{os.getpid()}@%h"],
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "worker.log", "w"),  # noqa: SIM115
            text=True, env=env)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def outputs(data_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (data_dir / "results").rglob("*.dcm")}


def test_celery_worker_processes_the_study_like_the_embedded_pool(
        serve: Any, worker: Any, tmp_path: Path) -> None:
    redis.Redis.from_url(REDIS_URL).delete("cxr")
    files = samples.write_study(tmp_path / "cr", "cr", 11, rows=256, columns=256)

    celery_config = config_with(tmp_path, "celery", broker=True)
    node = serve(celery_config, data_dir=tmp_path / "celery")
    worker(node.config_path)
    assert storescu(node.port, files).returncode == 0
    wait_until(lambda: len(outputs(node.data_dir)) == 2, timeout=120)
    listed = node.umsrep("studies", "--data-dir", str(node.data_dir), "--json")
    assert '"state": "done"' in listed.stdout
    node.stop()

    embedded = serve(config_with(tmp_path, "embedded", broker=False),
                     data_dir=tmp_path / "embedded")
    assert storescu(embedded.port, files).returncode == 0
    wait_until(lambda: len(outputs(embedded.data_dir)) == 2, timeout=120)
    assert outputs(embedded.data_dir) == outputs(node.data_dir)
