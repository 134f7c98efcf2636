"""Only what the model knows gets measured, through the node's embedded pool on the packaged
rules and chest bundle: an image that is no frontal chest is skipped with its reason and
nothing is sent; a chest whose CTR is implausible gets its SEG and an SR that says why there
is no CTR."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pacs_node import samples
from pacs_node.node import Node
from tests.conftest import dciodvfy_errors, node_config, shared_data, storescu, wait_until
from tests.integration.conftest import in_process_node, settled
from workers.demo import leg_pixels

pytestmark = pytest.mark.integration


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    raw = node_config(tmp_path / "data", 0, routing={"quiet_seconds": 0.5})  # packaged rules
    running = in_process_node(raw)
    running.start()
    yield running
    running.stop()


def results(node: Node) -> list[pydicom.Dataset]:
    folder = node.config.folder("results")
    assert folder is not None
    return [pydicom.dcmread(p) for p in sorted(folder.rglob("*.dcm"))]


def texts(sr: pydicom.Dataset) -> list[str]:
    found = []
    for item in sr.ContentSequence:
        found += [str(i.TextValue) for i in item.get("ContentSequence", []) if "TextValue" in i]
    return found


def widened_chest() -> np.ndarray:
    """The shipped normal radiograph (a patient the model never trained on) with each lung
    made wider by 256 columns copied from its middle: the heart stays as it is, the thorax
    grows, and the CTR from the packaged model's masks falls to about 0.06 (0.8.0: 0.13, and
    144 columns left it 0.44; wider still, and the model no longer takes it for a chest)."""
    with Image.open(samples.SAMPLE_IMAGES / samples.CHEST_IMAGES[0].file) as png:
        image = np.asarray(png.convert("L"))
    width = image.shape[1]
    for middle in (int(0.7 * width), int(0.3 * width)):  # the image's right one first
        band = np.tile(image[:, middle - 8:middle + 8], (1, int(0.5 * width) // 16))
        image = np.concatenate([image[:, :middle], band, image[:, middle:]], axis=1)
    return image


def test_a_cr_that_is_no_chest_is_skipped_with_its_reason_and_nothing_sent(
        node: Node, tmp_path: Path) -> None:
    # A leg that says no body part: the rules send it to cxr, the masks say it is no chest.
    leg = samples.cr_dataset(31, pixels=leg_pixels(512, 384), body_part="", view="")
    assert storescu(node.port, [samples.write(leg, tmp_path / "leg.dcm")]).returncode == 0
    [study] = wait_until(lambda: settled(node, 1), timeout=90)
    assert (study.route, study.state) == ("chest-xray", "skipped")
    assert (study.reason or "").startswith(
        f"job chest-xray skipped: nothing the pipeline applies to: {leg.SOPInstanceUID}: "
        "not a frontal chest radiograph: ")
    events = node.journal.events(study.study_key)
    assert "findings" not in [e["state"] for e in events]
    assert node.journal.outbox() == [] and results(node) == []


def test_an_implausible_ctr_gives_seg_and_an_sr_that_says_why(node: Node,
                                                              tmp_path: Path) -> None:
    cr = samples.cr_dataset(32, pixels=widened_chest(), pixel_spacing=0.45)
    assert storescu(node.port, [samples.write(cr, tmp_path / "wide.dcm")]).returncode == 0
    [study] = wait_until(lambda: settled(node, 1), timeout=90)
    assert study.state == "done", study.reason
    written = {ds.Modality: ds for ds in results(node)}
    assert set(written) == {"SEG", "SR"}
    sr = written["SR"]
    [why] = [t for t in texts(sr) if "CTR" in t]
    assert why.startswith("Not measured: CTR 0.")
    assert why.endswith("from the masks is outside the physiological range 0.25-0.85: "
                        "CTR not reported")
    names = [str(m.ConceptNameCodeSequence[0].CodeMeaning)
             for group in sr.ContentSequence for item in group.get("ContentSequence", [])
             for m in item.get("ContentSequence", []) if m.ValueType == "NUM"]
    assert "Area" in names and "Cardiothoracic ratio" not in names
    folder = node.config.folder("results")
    assert folder is not None
    path = next(folder.rglob("SR-*.dcm"))
    assert dciodvfy_errors(path) == []


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # the file's own UIDs
def test_a_real_dental_cr_without_body_part_is_no_chest(node: Node, tmp_path: Path) -> None:
    # fo-dicom's CR of teeth says no BodyPartExamined: routed to cxr, and skipped there.
    teeth = pydicom.dcmread(shared_data("dicom-corpus", "fo-dicom") /
                            "CR-ModalitySequenceLUT.dcm")
    assert "BodyPartExamined" not in teeth and teeth.Modality == "CR"
    # Its SOP Instance UID is no UID (999.999.01...): the pipeline would skip it for that.
    teeth.SOPInstanceUID = teeth.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    sent = storescu(node.port, [samples.write(teeth, tmp_path / "teeth.dcm")],
                    extra=("--propose-lossless",))  # JPEG Lossless, as it is
    assert sent.returncode == 0, sent.stderr
    [study] = wait_until(lambda: settled(node, 1), timeout=90)
    assert (study.route, study.state) == ("chest-xray", "skipped")
    assert "not a frontal chest radiograph" in (study.reason or "")
    assert node.journal.outbox() == []


def test_a_real_chest_labelled_extremity_is_only_stored(node: Node, tmp_path: Path) -> None:
    chest = pydicom.dcmread(shared_data("dicom-corpus", "fo-dicom") / "CR-MONO1-10-chest",
                            force=True)
    chest.BodyPartExamined = "EXTREMITY"
    chest.file_meta = FileMetaDataset()
    chest.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    assert storescu(node.port, [samples.write(chest, tmp_path / "tibia.dcm")]).returncode == 0
    [study] = wait_until(lambda: settled(node, 1), timeout=90)
    assert (study.route, study.state) == ("store-only", "ignored")
    assert node.journal.outbox() == []
