"""The whole path: storescu -> umsrep serve -> pipeline -> outbox -> Orthanc, checked over
Orthanc's REST API; a CT study follows its forward rule; a study sent twice adds nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydicom
import pytest

from pacs_node import samples
from tests.conftest import node_config, storescu
from tests.e2e.conftest import Orthanc, wait_for
from tests.unit.test_inference import tiny_bundle

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def node_for(tmp_path: Path, orthanc: Orthanc) -> dict[str, Any]:
    # The packaged chest bundle (an untrained model's masks are no chest: skipped), a tiny echo.
    echo = str(tiny_bundle(tmp_path / "bundles", "echo_doppler"))
    return node_config(
        tmp_path / "data", 0,
        destinations={"pacs": {"ae_title": "ORTHANC", "host": "127.0.0.1",
                               "port": orthanc.dicom_port}},
        routing={"quiet_seconds": 1, "rules": [
            {"name": "chest", "match": {"modality": ["CR", "DX"]},
             "process": {"pipeline": "cxr", "destinations": ["pacs"]}},
            {"name": "echo", "match": {"modality": ["US"], "spectral_doppler": True},
             "process": {"pipeline": "echo_doppler", "bundle": echo,
                         "destinations": ["pacs"]}},
            {"name": "ct", "match": {"modality": ["CT"]}, "forward": {"destinations": ["pacs"]}},
        ]})


def by_modality(orthanc: Orthanc, study_uid: str) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for tags in orthanc.instances():
        if tags.get("StudyInstanceUID") == study_uid:
            found.setdefault(tags["Modality"], []).append(tags)
    return found


def test_results_arrive_in_orthanc_once(serve: Any, orthanc: Orthanc, tmp_path: Path) -> None:
    node = serve(node_for(tmp_path, orthanc))
    cr = samples.write_study(tmp_path / "cr", "cr", 21, rows=320, columns=288)
    us = samples.write_study(tmp_path / "us", "us_doppler", 22, rows=300, columns=400)
    ct = samples.write_study(tmp_path / "ct", "ct", 23, count=2, rows=64, columns=64)
    for files in (cr, us, ct):
        assert storescu(node.port, files).returncode == 0
    cr_uid, us_uid, ct_uid = (str(pydicom.dcmread(f[0]).StudyInstanceUID) for f in (cr, us, ct))

    chest = wait_for(lambda: (found := by_modality(orthanc, cr_uid)) and
                     {"SEG", "SR"} <= set(found) and found)
    echo = wait_for(lambda: (found := by_modality(orthanc, us_uid)) and
                    {"SEG", "SR"} <= set(found) and found)
    forwarded = wait_for(lambda: (found := by_modality(orthanc, ct_uid)).get("CT", [])
                         and len(found["CT"]) == 2 and found)
    assert set(forwarded) == {"CT"}  # forwarded as is, not processed
    cr_sop = str(pydicom.dcmread(cr[0]).SOPInstanceUID)
    for found in (chest, echo):
        assert len(found["SEG"]) == 1 and len(found["SR"]) == 1
        assert "NOT FOR CLINICAL USE" in found["SR"][0]["SeriesDescription"]
    seg_tags = chest["SEG"][0]
    seg_id = next(i for i in orthanc.get("/instances")
                  if orthanc.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"]
                  == seg_tags["SOPInstanceUID"])
    seg_full = orthanc.get(f"/instances/{seg_id}/tags?simplify")
    referenced = seg_full["ReferencedSeriesSequence"][0]["ReferencedInstanceSequence"][0]
    assert referenced["ReferencedSOPInstanceUID"] == cr_sop

    count = len(orthanc.get("/instances"))
    assert storescu(node.port, cr).returncode == 0  # the PACS sends the CR again
    wait_for(lambda: any(s["study_instance_uid"] == cr_uid and s["duplicates"] == 1
                         for s in studies_json(node)))  # acknowledged, not stored again
    assert [s["version"] for s in studies_json(node) if s["study_instance_uid"] == cr_uid] == [1]
    wait_for(lambda: all(o["outbox"].get("pending", 0) == 0 for o in studies_json(node)))
    assert len(orthanc.get("/instances")) == count  # nothing added


def studies_json(node: Any) -> list[dict[str, Any]]:
    listed = node.umsrep("studies", "--data-dir", str(node.data_dir), "--json")
    return list(json.loads(listed.stdout))
