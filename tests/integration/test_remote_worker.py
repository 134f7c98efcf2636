"""A Celery worker that uses the node's API only: its config names the broker and a scratch
folder of its own, not the node's data directory, and the node's URL comes with each task
(`api.url`); the study comes by WADO-RS, the journal calls and the outputs (STOW-RS) go back
over HTTP, and the node delivers them, the same bytes as its embedded pool makes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from pacs_node import samples
from tests.conftest import free_port, storescu, wait_until
from tests.integration import test_celery
from tests.integration.test_celery import REDIS_URL, config_with, outputs

pytestmark = pytest.mark.integration

worker = test_celery.worker  # `celery -A workers.app worker -Q cxr -c 1`, log in tmp_path

TOKEN = "remote-worker-token-0123456789"


def test_a_worker_with_only_the_node_api_processes_a_study(serve: Any, worker: Any,
                                                           tmp_path: Path) -> None:
    redis.Redis.from_url(REDIS_URL).delete("cxr")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    api_port = free_port()
    config = config_with(tmp_path, "node", broker=True)
    config["api"] = {"port": api_port, "token_file": str(token_file),
                     "url": f"http://127.0.0.1:{api_port}"}  # sent with each task
    node = serve(config, data_dir=tmp_path / "node")
    scratch = tmp_path / "worker-scratch"
    worker_config = tmp_path / "worker.yaml"  # the broker and a folder of its own: no more
    worker_config.write_text(yaml.safe_dump({"broker": {"url": REDIS_URL},
                                             "node": {"data_dir": str(scratch)}}))
    worker(worker_config, env={"UMSREP_NODE_TOKEN_FILE": str(token_file)})  # no URL

    files = samples.write_study(tmp_path / "cr", "cr", 14, 2, rows=256, columns=256)
    assert storescu(node.port, files).returncode == 0
    wait_until(lambda: len(outputs(node.data_dir)) == 4, timeout=120)  # SEG and SR of each
    [study] = json.loads(node.umsrep("studies", "--data-dir", str(node.data_dir),
                                     "--json").stdout)
    assert study["state"] == "done"
    assert set(study["stages"]) == {"load", "preprocess", "inference", "postprocess",
                                    "writing"}  # noted by the worker, through the node
    assert len(study["findings"]) == 2
    assert not (scratch / "journal.db").exists()  # it opened no journal of its own
    assert (scratch / "instances").is_dir()  # the study came by WADO-RS, into its folder,
    assert not list(scratch.rglob("*.dcm"))  # it went when the task ended, as did the outputs
    kept = sorted(p.name for p in (node.data_dir / "outputs").rglob("*.dcm"))
    assert kept == sorted(outputs(node.data_dir))  # the node keeps what it delivers
    embedded = serve(config_with(tmp_path, "embedded", broker=False),
                     data_dir=tmp_path / "embedded")
    assert storescu(embedded.port, files).returncode == 0
    wait_until(lambda: len(outputs(embedded.data_dir)) == 4, timeout=120)
    assert outputs(embedded.data_dir) == outputs(node.data_dir)  # byte for byte
