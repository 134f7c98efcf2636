"""The node's REST API (pacs_node.rest) and the commands that use it, against a real
`umsrep serve`: filters and paging, a study's page, complete, pause and resume a route,
reprocess, discard, retry deliveries, counts, and the OpenAPI document of exactly those."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest

from pacs_node.rest import OPERATIONS, PREFIX, routes
from tests.conftest import free_port, node_config, storescu, wait_until
from tests.integration.test_api import TOKEN, call

pytestmark = pytest.mark.integration

def test_every_operation_described_is_served_and_every_route_described() -> None:
    patterns = [re.compile(p + "$") for p, _, _ in routes(None, TOKEN)]  # type: ignore[arg-type]
    described = {PREFIX + path.replace("{key}", "1.2.3@1").replace("{name}", "chest")
                 for _, path, *_ in OPERATIONS}
    for path in described:
        assert sum(bool(p.match(path)) for p in patterns) == 1, path
    for pattern in patterns:
        assert any(pattern.match(path) for path in described), pattern.pattern


def test_an_operator_drives_studies_and_routes_through_the_rest_api(
        serve: Any, study_files: Any, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    port = free_port()
    config = node_config(tmp_path / "data", 0, api={"port": port, "token_file": str(token_file)},
                         routing={"quiet_seconds": 120, "rules": [
                             {"name": "chest", "match": {"modality": ["CR"]},
                              "process": {"pipeline": "cxr", "destinations": ["results"]}}]})
    node = serve(config)
    api = f"http://127.0.0.1:{port}{PREFIX}"

    status, doc = call(f"{api}/openapi.json", token=None)  # no token needed to read it
    assert status == 200 and doc["openapi"] == "3.1.0"
    assert set(doc["paths"]) == {PREFIX + path for _, path, *_ in OPERATIONS}
    assert call(f"{api}/studies", token=None)[0] == 401

    first = study_files("cr", count=2, seed=1)
    second = study_files("cr", count=2, seed=2)  # two images: no study completes on release
    assert storescu(node.port, first).returncode == 0
    assert storescu(node.port, second).returncode == 0
    status, page = call(f"{api}/studies?state=receiving&modality=CR&calling_ae=TESTSCU")
    assert status == 200 and page["total"] == 2
    assert [s["instances"] for s in page["studies"]] == [2, 2]  # each study's own count
    status, page = call(f"{api}/studies?limit=1&offset=1")
    assert (page["total"], len(page["studies"])) == (2, 1)
    keys = {pydicom.dcmread(f[0]).StudyInstanceUID: None for f in (first, second)}
    key, other = (f"{uid}@1" for uid in keys)
    assert page["studies"][0]["study_key"] == key  # newest first: page 2 holds the older
    assert call(f"{api}/studies?state=lost")[0] == 400
    assert call(f"{api}/studies/1.2.3@1")[0] == 404

    assert call(f"{api}/routes/chest/pause", "POST") == (200, {"name": "chest", "paused": True})
    status, study = call(f"{api}/studies/{key}/complete", "POST")
    assert status == 200 and study["state"] == "queued"
    time.sleep(1.5)  # the dispatch loop ran: the paused route's job waits
    status, counts = call(f"{api}/counts")
    assert counts["jobs"] == {"queued": 1} and counts["paused_routes"] == ["chest"]
    [route] = call(f"{api}/routes")[1]["routes"]
    assert route["name"] == "chest" and route["paused_since"] is not None
    assert call(f"{api}/routes/chest/resume", "POST")[1]["paused"] is False
    wait_until(lambda: call(f"{api}/studies/{key}")[1]["state"] == "done", timeout=120)

    status, study = call(f"{api}/studies/{key}")
    assert [i["sop_instance_uid"] for i in study["instances"]] == [
        str(pydicom.dcmread(f).SOPInstanceUID) for f in first]
    assert {e["state"] for e in study["events"]} >= {"receiving", "complete", "queued", "done"}
    assert len(study["findings"]) == 2 and "PatientName" not in study  # no patient data
    status, answer = call(f"{api}/studies/{key}/complete", "POST")
    assert status == 409 and "it must be receiving" in answer["error"]

    # the commands ask the running node
    done = node.umsrep("complete", "--config", str(node.config_path), other)
    assert done.returncode == 0 and done.stdout.strip() == f"study {other}: queued"
    again = node.umsrep("complete", "--config", str(node.config_path), other)
    assert again.returncode == 1 and "it must be receiving" in again.stderr
    wait_until(lambda: call(f"{api}/studies/{other}")[1]["state"] == "done", timeout=120)
    dropped = node.umsrep("discard", "--config", str(node.config_path), other)
    assert dropped.returncode == 0 and "discarded" in dropped.stdout
    assert not any(Path(i).exists() for i in spool_files(node.data_dir, other))
    assert call(f"{api}/studies/{other}/reprocess", "POST")[0] == 409  # nothing to process

    assert call(f"{api}/studies/{key}/reprocess", "POST") == (
        200, {"study_key": key, "state": "receiving"})
    assert call(f"{api}/deliveries/retry?destination=results", "POST") == (200, {"requeued": 0})
    assert call(f"{api}/routes/nope/pause", "POST")[0] == 404


def spool_files(data_dir: Path, key: str) -> list[str]:
    from pacs_node.journal import Journal, journal_path

    journal = Journal(journal_path(data_dir))
    try:
        return [i.path for i in journal.instances(key)]
    finally:
        journal.close()


def test_the_commands_need_the_node_api(tmp_path: Path) -> None:
    import subprocess

    from tests.conftest import UMSREP

    done = subprocess.run([*UMSREP, "complete", "--data-dir", str(tmp_path), "1.2.3@1"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "an `api` section" in done.stderr
