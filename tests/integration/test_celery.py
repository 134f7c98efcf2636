"""The Celery path: the node sends the task through the machine's Redis, a real
`celery -A workers.app worker` runs it, and the outputs equal the embedded mode's."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from pacs_node import samples
from tests.conftest import free_port, node_config, storescu, wait_for_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REDIS_URL = "redis://127.0.0.1:6379/14"


def config_with(tmp_path: Path, name: str, broker: bool) -> dict[str, Any]:
    # Complete on release, not on a quiet period: on a loaded machine a pause between two
    # C-STOREs would split the study into two versions, two tasks. The packaged chest bundle:
    # an untrained model's masks are no chest, and its images would be skipped.
    raw = node_config(tmp_path / name, 0, routing={"quiet_seconds": 60, "rules": [
        {"name": "chest", "match": {"modality": ["CR"]}, "complete_on_release": True,
         "process": {"pipeline": "cxr", "destinations": ["results"]}}]})
    if broker:
        raw["broker"] = {"url": REDIS_URL}
    return raw


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[str]] = []

    def start(config_path: Path, *command: str,
              env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """`celery -A workers.app COMMAND...`; a worker on the cxr queue by default (prefork,
        one child process), its log in tmp_path/worker.log."""
        command = command or ("worker", "-Q", "cxr", "-c", "1", "-l", "INFO",
                              "-n", f"test-{os.getpid()}@%h")
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.app", *command],
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"{command[0]}.log", "w"),  # noqa: SIM115
            text=True, env={**os.environ, "UMSREP_CONFIG": str(config_path), **(env or {})})
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def flower_tasks(port: int) -> dict[str, Any]:
    """Flower's finished tasks, through its API with the basic auth of the documented setup."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/tasks")
    request.add_header("Authorization", "Basic " + base64.b64encode(b"admin:secret").decode())
    with urllib.request.urlopen(request, timeout=10) as reply:
        tasks: dict[str, Any] = json.loads(reply.read())
    return {k: t for k, t in tasks.items() if t.get("state") == "SUCCESS"}


def outputs(data_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (data_dir / "results").rglob("*.dcm")}


def test_celery_worker_processes_the_study_like_the_embedded_pool(
        serve: Any, worker: Any, tmp_path: Path) -> None:
    redis.Redis.from_url(REDIS_URL).delete("cxr")
    files = samples.write_study(tmp_path / "cr", "cr", 11, rows=256, columns=256)

    celery_config = config_with(tmp_path, "celery", broker=True)
    node = serve(celery_config, data_dir=tmp_path / "celery")
    worker(node.config_path)
    flower_port = free_port()
    flower = worker(node.config_path, "flower", f"--port={flower_port}", "--address=127.0.0.1",
                    "--basic-auth=admin:secret")
    wait_for_port(flower_port, timeout=60, proc=flower)
    assert storescu(node.port, files).returncode == 0
    wait_until(lambda: len(outputs(node.data_dir)) == 2, timeout=120)
    listed = json.loads(node.umsrep("studies", "--data-dir", str(node.data_dir),
                                    "--json").stdout)
    assert listed[0]["state"] == "done"
    assert set(listed[0]["stages"]) == {"load", "preprocess", "inference", "postprocess",
                                        "writing"}  # the worker's stage timings
    assert "INFER s" in node.umsrep("studies", "--data-dir", str(node.data_dir)).stdout
    # The node says how the worker's job ended (in broker mode it only queued it).
    assert wait_until(lambda: "job chest done" in node.log(), timeout=15)
    # Its one pool process took every core the worker may use, and said so.
    threads = len(os.sched_getaffinity(0))
    assert re.search(rf"worker process \d+: torch on cpu, {threads} threads",
                     (tmp_path / "worker.log").read_text())

    tasks = wait_until(lambda: flower_tasks(flower_port), timeout=30)
    assert len(tasks) == 1, tasks
    [task] = tasks.values()
    assert task["name"] == "umsrep.process_study" and task["state"] == "SUCCESS"
    assert listed[0]["study_key"] in task["args"] and "chest" in task["args"]
    assert "PHANTOM" not in json.dumps(task)  # no patient name or ID
    with pytest.raises(urllib.error.HTTPError, match="401"):
        urllib.request.urlopen(f"http://127.0.0.1:{flower_port}/api/tasks", timeout=10)
    node.stop()

    embedded = serve(config_with(tmp_path, "embedded", broker=False),
                     data_dir=tmp_path / "embedded")
    assert storescu(embedded.port, files).returncode == 0
    wait_until(lambda: len(outputs(embedded.data_dir)) == 2, timeout=120)
    assert outputs(embedded.data_dir) == outputs(node.data_dir)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Any]:
    """A redis-server of this test's own on a free port, which the test may kill and restart."""
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                                stdout=subprocess.DEVNULL)
        procs.append(proc)
        wait_for_port(port, proc=proc)
        return proc

    start.url = f"redis://127.0.0.1:{port}/0"  # type: ignore[attr-defined]
    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_restarted_redis_loses_the_message_and_the_node_sends_it_again(
        serve: Any, worker: Any, own_redis: Any, tmp_path: Path) -> None:
    first = own_redis()
    config = config_with(tmp_path, "data", broker=True)
    config["broker"] = {"url": own_redis.url, "redispatch_after_s": 1}
    node = serve(config, data_dir=tmp_path / "data")
    files = samples.write_study(tmp_path / "cr", "cr", 12, rows=256, columns=256)
    assert storescu(node.port, files).returncode == 0
    client = redis.Redis.from_url(own_redis.url)
    wait_until(lambda: client.llen("cxr") == 1)  # sent, no worker yet
    first.kill()  # Redis dies; it kept nothing
    first.wait()
    own_redis()
    assert client.llen("cxr") == 0
    wait_until(lambda: "sending it again" in node.log(), timeout=30)
    worker(node.config_path)
    wait_until(lambda: len(outputs(node.data_dir)) == 2, timeout=120)
    studies = json.loads(node.umsrep("studies", "--data-dir", str(node.data_dir),
                                     "--json").stdout)
    assert [s["state"] for s in studies] == ["done"]


def test_a_rule_renamed_by_a_reload_does_not_fail_a_worker_started_before(
        serve: Any, worker: Any, tmp_path: Path) -> None:
    """The worker read the config with its first task; the node, reloaded, then routes by a
    rule the worker never heard of. The job carries its rule's settings as routed."""
    redis.Redis.from_url(REDIS_URL).delete("cxr")
    node = serve(config_with(tmp_path, "reload", broker=True), data_dir=tmp_path / "reload")
    worker(node.config_path)
    first = samples.write_study(tmp_path / "cr1", "cr", 12, rows=256, columns=256)
    assert storescu(node.port, first).returncode == 0
    wait_until(lambda: len(outputs(node.data_dir)) == 2, timeout=120)  # SEG and SR
    renamed = yaml.safe_load(node.config_path.read_text())
    renamed["routing"]["rules"][0]["name"] = "chest-v2"
    renamed["routing"]["rules"][0]["process"]["outputs"] = ["sr"]
    node.config_path.write_text(yaml.safe_dump(renamed))
    node.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "routing reloaded" in node.log())
    second = samples.write_study(tmp_path / "cr2", "cr", 13, rows=256, columns=256)
    assert storescu(node.port, second).returncode == 0
    wait_until(lambda: len(outputs(node.data_dir)) == 3, timeout=120)  # and its SR only
    listed = json.loads(node.umsrep("studies", "--data-dir", str(node.data_dir),
                                    "--json").stdout)
    assert sorted((s["state"], s["route"]) for s in listed) == [("done", "chest"),
                                                                ("done", "chest-v2")]
