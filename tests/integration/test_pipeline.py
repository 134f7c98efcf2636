"""The pipeline in the node's embedded pool: DICOM in, SEG and SR out, through the outbox."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file

from pacs_node import cli, samples
from pacs_node.dispatch import installed_handler
from pacs_node.node import Node
from pacs_node.sender import send_files
from tests.conftest import node_config, storescu, wait_until
from tests.integration.conftest import in_process_node, settled
from tests.unit.test_errors_transient import undecodable_cr
from tests.unit.test_inference import tiny_bundle

pytestmark = pytest.mark.integration


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    # The packaged chest bundle: an untrained model's masks are no chest, and the pipeline
    # rightly skips what it segments. The samples' chest picture is one to this bundle.
    echo = tiny_bundle(tmp_path / "bundles", "echo_doppler")
    raw = node_config(tmp_path / "data", 0, routing={"quiet_seconds": 0.5, "rules": [
        {"name": "chest", "match": {"modality": ["CR", "DX"]},
         "process": {"pipeline": "cxr", "outputs": ["seg", "sr", "denoised"],
                     "destinations": ["results"]}},
        {"name": "echo", "match": {"modality": ["US"]},
         "process": {"pipeline": "echo_doppler", "bundle": str(echo),
                     "destinations": ["results"]}},
    ]})
    running = in_process_node(raw)
    running.start()
    yield running
    running.stop()


def test_the_workers_provide_the_embedded_handler() -> None:
    from workers.pipeline import process_study

    assert installed_handler() is process_study


def test_chest_and_doppler_studies_come_out_as_seg_and_sr(node: Node, tmp_path: Path) -> None:
    cr = samples.write_study(tmp_path / "cr", "cr", 1, rows=320, columns=280)
    us = samples.write_study(tmp_path / "us", "us_doppler", 2, rows=300, columns=400)
    assert storescu(node.port, cr).returncode == 0
    assert storescu(node.port, us).returncode == 0
    studies = wait_until(lambda: settled(node, 2), timeout=90)
    assert {s.state for s in studies} == {"done"}, [(s.state, s.reason) for s in studies]
    results = node.config.folder("results")
    assert results is not None
    written = [pydicom.dcmread(p) for p in sorted(results.rglob("*.dcm"))]
    kinds = sorted((ds.Modality, ds.StudyInstanceUID) for ds in written)
    cr_study, us_study = (pydicom.dcmread(f[0]).StudyInstanceUID for f in (cr, us))
    assert kinds == sorted([("CR", cr_study), ("SEG", cr_study), ("SR", cr_study),
                            ("SEG", us_study), ("SR", us_study)])
    denoised = next(ds for ds in written if ds.Modality == "CR")
    assert denoised.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
    assert list(denoised.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    for ds in written:
        assert "NOT FOR CLINICAL USE" in ds.SeriesDescription
    seg = next(ds for ds in written if ds.Modality == "SEG" and ds.StudyInstanceUID == cr_study)
    source_uid = pydicom.dcmread(cr[0]).SOPInstanceUID
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0] \
        .ReferencedSOPInstanceUID == source_uid
    validity = subprocess.run(["/usr/bin/dciodvfy", str(next(results.rglob("SR-*.dcm")))],
                              capture_output=True, text=True)
    assert not [line for line in validity.stderr.splitlines() if line.startswith("Error")]
    steps = [e["state"] for e in node.journal.events(studies[0].study_key)]
    assert {"load", "preprocess", "inference", "postprocess", "writing"} <= set(steps)


def test_nothing_applicable_ends_skipped_with_its_reason(node: Node, tmp_path: Path) -> None:
    lateral = samples.cr_dataset(5, rows=256, columns=256)
    lateral.ViewPosition = "LL"
    bmode = samples.write_study(tmp_path / "bmode", "us_bmode", 6, rows=200, columns=200)
    assert storescu(node.port, [samples.write(lateral, tmp_path / "lat.dcm")]).returncode == 0
    assert storescu(node.port, bmode).returncode == 0
    studies = wait_until(lambda: settled(node, 2), timeout=60)
    reasons = {s.route: (s.state, s.reason or "") for s in studies}
    assert reasons["chest"][0] == "skipped" and "not a frontal view" in reasons["chest"][1]
    assert reasons["echo"][0] == "skipped" and "no spectral Doppler region" in reasons["echo"][1]
    assert node.journal.outbox() == []


def test_an_image_no_decoder_reads_is_skipped_with_its_reason_and_its_study_goes_on(
        node: Node, tmp_path: Path) -> None:
    """Pixel data that no installed decoder reads is the image's own defect: the job does
    not fail on it. Garbage RLE, and pydicom's real 12-bit JPEG Extended test file (an NM
    image of the whole body, relabelled a chest CR), which neither pylibjpeg nor Pillow reads."""
    good = samples.cr_dataset(10, rows=256, columns=256)
    single, multi = undecodable_cr(11), undecodable_cr(12, frames=2)
    for bad in (single, multi):  # in the good image's study
        bad.StudyInstanceUID = good.StudyInstanceUID
    paths = [samples.write(ds, tmp_path / f"{n}.dcm") for n, ds in enumerate((good, single,
                                                                              multi))]
    assert storescu(node.port, paths, extra=("-xr",)).returncode == 0  # RLE goes as it is
    alone = pydicom.dcmread(get_testdata_file("JPEG-lossy.dcm"))  # a study of its own
    alone.Modality, alone.BodyPartExamined = "CR", "CHEST"
    assert storescu(node.port, [samples.write(alone, tmp_path / "jpeg.dcm")],
                    extra=("-xx",)).returncode == 0  # JPEG 12-bit: goes as it is
    studies = {s.study_uid: s for s in wait_until(lambda: settled(node, 2), timeout=90)}
    mixed, lone = studies[str(good.StudyInstanceUID)], studies[str(alone.StudyInstanceUID)]
    assert mixed.state == "done", mixed.reason
    [noted] = [e["detail"] for e in node.journal.events(mixed.study_key)
               if e["state"] == "skipped images"]
    for bad in (single, multi):
        assert f"{bad.SOPInstanceUID}: cannot decode pixel data in transfer syntax RLE " \
            "Lossless" in noted
    findings = [e for e in node.journal.events(mixed.study_key) if e["state"] == "findings"]
    assert len(findings) == 1  # the good image
    assert lone.state == "skipped"
    assert (lone.reason or "").startswith(
        f"job chest skipped: nothing the pipeline applies to: {alone.SOPInstanceUID}: cannot "
        "decode pixel data in transfer syntax JPEG Extended (Process 2 and 4)")


def test_the_same_study_twice_adds_nothing_and_our_outputs_are_not_processed(
        node: Node, tmp_path: Path) -> None:
    cr = samples.write_study(tmp_path / "cr", "cr", 7, rows=256, columns=256)
    assert storescu(node.port, cr).returncode == 0
    wait_until(lambda: settled(node, 1), timeout=60)
    results = node.config.folder("results")
    assert results is not None
    first = {p.name: p.read_bytes() for p in results.rglob("*.dcm")}
    assert storescu(node.port, cr).returncode == 0  # sent again: a duplicate, no new version
    [study] = wait_until(lambda: settled(node, 1), timeout=60)
    assert [e["state"] for e in node.journal.events(study.study_key)].count("duplicate") == 1
    assert {p.name: p.read_bytes() for p in results.rglob("*.dcm")} == first
    outputs = sorted(results.rglob("*.dcm"))
    # A PACS sends our outputs back (dcmtk's storescu proposes no SEG context by default).
    assert all(r.ok for r in send_files("127.0.0.1", node.port, outputs, called_ae="UMSREP"))
    studies = wait_until(lambda: settled(node, 2), timeout=60)
    assert studies[-1].state == "ignored" and "our own outputs" in (studies[-1].reason or "")


def test_the_images_of_a_study_go_through_the_encoder_in_batches(node: Node,
                                                                tmp_path: Path) -> None:
    from workers.pipeline import predictor

    model = predictor("cxr")
    batches: list[int] = []
    # The classifier runs in the whole-image passes only, not over the denoising tiles.
    hook = model.model.heads["classify"].register_forward_hook(
        lambda module, inputs, output: batches.append(int(inputs[0][1].shape[0])))
    try:
        files = samples.write_study(tmp_path / "cr", "cr", 8, count=6, rows=256, columns=256)
        assert storescu(node.port, files).returncode == 0
        [study] = wait_until(lambda: settled(node, 1), timeout=90)
    finally:
        hook.remove()
    assert study.state == "done"
    assert batches == [4, 2]  # six images, batches of the predictor's size (4)
    findings = [e for e in node.journal.events(study.study_key) if e["state"] == "findings"]
    assert len(findings) == 6


def test_a_patient_value_its_vr_does_not_allow_neither_fails_the_job_nor_shows(
        node: Node, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        fault_table: Any) -> None:
    """A birth date written ISO style failed the chest job, and the date was in the reason
    (`umsrep studies --json`), the journal and the logs; now the outputs leave it empty."""
    cr = samples.cr_dataset(9, rows=320, columns=280)
    with pydicom.config.disable_value_validation():
        cr.PatientBirthDate = "1970-01-01"
        path = samples.write(cr, tmp_path / "cr.dcm")
    assert storescu(node.port, [path]).returncode == 0
    [study] = wait_until(lambda: settled(node, 1), timeout=90)
    assert study.state == "done", study.reason
    results = node.config.folder("results")
    assert results is not None
    written = [pydicom.dcmread(p) for p in sorted(results.rglob("*.dcm"))]
    assert sorted(ds.Modality for ds in written) == ["CR", "SEG", "SR"]  # CR: the denoised
    assert all(not ds.get("PatientBirthDate") for ds in written)
    capsys.readouterr()
    assert cli.main(["studies", "--data-dir", str(node.config.node.data_dir), "--json"]) == 0
    listed = capsys.readouterr().out
    assert study.study_key in listed and "1970" not in listed
    events = node.journal.events(study.study_key)
    assert events and not any("1970" in str(e.get("detail") or "") for e in events)
    fault_table("a chest CR whose PatientBirthDate is 1970-01-01 (no DA)", "job done, the "
                "outputs leave the date empty", value_in_outputs_journal_or_listing=0)
