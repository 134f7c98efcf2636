"""`umsrep demo`, the README's first command, end to end on the embedded default."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from pacs_node import samples
from tests.conftest import dciodvfy_errors, overlong_values
from tests.unit.test_inference import tiny_bundle
from umsrep_core.models.bundle import available_bundles

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_sends_studies_and_writes_results_and_overlays(tmp_path: Path) -> None:
    # A bundle name resolves to the packaged bundle, else to a folder of that name here:
    # without packaged bundles the demo runs on tiny untrained ones.
    for modality in ("cxr", "echo_doppler"):
        if modality not in available_bundles():
            tiny_bundle(tmp_path, modality)
    result = subprocess.run([sys.executable, "-m", "pacs_node.cli", "demo", "--out", "out"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    # Both real chest radiographs are processed: a label, its probability, a CTR.
    for study in ("CR chest PA, NIH normal", "DX chest PA, NIH pneumonia"):
        [row] = [line for line in lines if study in line]
        route, state, label, probability = row.replace(study, "").split()[:4]
        assert (route, state) == ("chest-xray", "done"), row
        assert label != "-" and 0.0 <= float(probability) <= 1.0, row
        assert "CTR 0." in row, row
    assert any(line.startswith("echo-doppler") and " done " in line for line in lines)
    [leg] = [line for line in lines if "CR leg" in line]
    assert leg.startswith("chest-xray") and " skipped " in leg and "not a frontal chest" in leg
    assert samples.ACKNOWLEDGEMENT in result.stdout
    assert "NOT FOR CLINICAL USE" in result.stdout
    assert "highdicom" not in result.stderr  # its INFO lines do not flood the output
    modalities = sorted(pydicom.dcmread(p).Modality
                        for p in (tmp_path / "out/data/results").rglob("*.dcm"))
    assert modalities == ["SEG", "SEG", "SEG", "SR", "SR", "SR"]
    assert len(list((tmp_path / "out/overlays").glob("SEG-*.png"))) == 3
    for name in ("cr.dcm", "dx.dcm"):  # what a viewer of the sent chests reads
        assert samples.ACKNOWLEDGEMENT in pydicom.dcmread(tmp_path / "out/sent" / name) \
            .ImageComments
    # What the demo writes, its phantoms and the results, is valid: no DS over 16 characters.
    for path in [*(tmp_path / "out/sent").rglob("*.dcm"),
                 *(tmp_path / "out/data/results").rglob("*.dcm")]:
        assert overlong_values(pydicom.dcmread(path)) == [], path
        assert dciodvfy_errors(path) == [], path
    # A second run in the same folder starts afresh (it waited for 4 studies and found 8).
    again = subprocess.run([sys.executable, "-m", "pacs_node.cli", "demo", "--out", "out"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert [line.split()[:3] for line in again.stdout.splitlines() if "chest PA" in line] == [
        line.split()[:3] for line in lines if "chest PA" in line]
