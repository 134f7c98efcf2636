"""The reported cases as they happen: Orthanc, the PACS, holds real files (variants of corpus
files) and sends them to `umsrep serve`; the node stores every one, and the SEG and SR of the
chest CRs arrive back in Orthanc."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.conftest import DCMSEND, shared_data
from tests.e2e.conftest import Orthanc, wait_for
from tests.integration.test_real_files import (
    chest_variants,
    hex_uid_variants,
    journal,
    real_node,
    retired_us_variants,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def rest(orthanc: Orthanc, method: str, path: str, body: Any) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{orthanc.http_port}{path}",
                                     data=json.dumps(body).encode(), method=method)
    with urllib.request.urlopen(request, timeout=60) as reply:
        return json.loads(reply.read() or b"null")


def test_orthanc_sends_real_files_and_gets_seg_and_sr_back(serve: Any, orthanc: Orthanc,
                                                           tmp_path: Path) -> None:
    corpus = shared_data("dicom-corpus", "fo-dicom")
    node = real_node(serve, tmp_path, destination={
        "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port})
    variants = {**chest_variants(corpus, tmp_path / "variants"),
                **hex_uid_variants(corpus, tmp_path / "variants"),
                **retired_us_variants(corpus, tmp_path / "variants")}
    for path in variants.values():  # into the PACS first, as a modality would
        subprocess.run([DCMSEND, "--no-uid-checks", "-aec", "ORTHANC", "127.0.0.1",
                        str(orthanc.dicom_port), str(path)], capture_output=True, timeout=60,
                       check=True)
    held = orthanc.get("/instances")
    assert len(held) == len(variants)  # Orthanc stores them all: retired class, hex UIDs
    rest(orthanc, "PUT", "/modalities/umsrep",
         {"AET": "UMSREP", "Host": "127.0.0.1", "Port": node.port})
    rest(orthanc, "POST", "/modalities/umsrep/store", held)

    assert journal(node, "SELECT status, reason FROM rejections") == []
    assert len(journal(node, "SELECT * FROM instances")) == len(variants)
    processed = {str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
                 for name, path in variants.items()
                 if name.startswith("chest-") or name == "us-retired-doppler"}

    def results() -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for tags in orthanc.instances():
            if tags["Modality"] in ("SEG", "SR"):
                found.setdefault(tags["StudyInstanceUID"], set()).add(tags["Modality"])
        return found

    wait_for(lambda: all(results().get(uid) == {"SEG", "SR"} for uid in processed))
