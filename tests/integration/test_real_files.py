"""Real files sent to a real node: every file of ../shared/data/dicom-corpus/fo-dicom, and
variants of corpus files that reproduce reported cases (a retired ultrasound SOP class,
64-character hex UIDs, chest CRs without a usable pixel spacing), and every image of pydicom's
test files and the corpus relabelled a chest CR, for the chest pipeline to meet.

Each file is stored as a PACS stores it, or refused with the status a PACS would give (Orthanc
1.10 stores none of the refused ones); each study ends processed, skipped or stored only, with
its reason, never failed; the SEG and SR that come back are valid (dciodvfy)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config

from pacs_node.samples import cr_dataset
from pacs_node.sender import send_files
from pacs_node.spool import file_name
from tests.conftest import (
    DCMSEND,
    ServedNode,
    dciodvfy_errors,
    node_config,
    overlong_values,
    shared_data,
    storescu,
    wait_until,
)
from tests.integration.conftest import StoreScp, in_process_node, settled
from tests.unit.test_outputs_real import add_doppler_region, as_frontal_chest_cr, real_images

pytestmark = pytest.mark.integration

SUCCESS = 0x0000
# Not sent, and why: no C-STORE can carry them.
NOT_SENT = {
    "DICOMDIR": "a media directory (PS3.10), not a SOP instance",
    "minimumdict.xml": "not DICOM: fo-dicom's dictionary",
    "minimumdict.xml.gz": "not DICOM: fo-dicom's dictionary, gzipped",
    "GH340.dcm": "neither file meta nor SOP Class/Instance UID: no request can name it",
}
# dcmsend sends files with a file meta only; storescu sends a bare dataset.
BARE_DATASETS = {"CR-MONO1-10-chest"}
# dcmtk cannot read these (a stray item tag, broken sequences, a command group in the
# dataset, no SOP Class UID): pynetdicom sends their bytes as they are on disk.
DCMTK_CANNOT_READ = {"FreezePattern.dcm", "GH179B.dcm", "GH1339.dcm", "GH364.dcm", "GH626.dcm",
                     "DIRW0007", "charset/chrSQEncoding.dcm", "charset/chrSQEncoding1.dcm"}
# The node's answer where it is not Success. Orthanc refuses each of these as well (missing
# UIDs), or cannot read it at all (the truncated and the unparsable).
REFUSED = {
    "FreezePattern.dcm": 0x0117,  # SOP Instance UID empty
    "charset/chrSQEncoding.dcm": 0x0117,  # a sequence test object: no SOP Instance UID
    "charset/chrSQEncoding1.dcm": 0x0117,
    "GH179B.dcm": 0xC000,  # a private element longer than the file
    "GH1339.dcm": 0xC000,  # nothing parsable after the file meta
    "GH220.dcm": 0xA900,  # no Study Instance UID
    "GH223.dcm": 0xA900,
    "GH487.dcm": 0xA900,
    "GH626.dcm": 0xA900,
    "multiframe.dcm": 0xA900,  # Study Instance UID empty
}
SETTLED = ("done", "skipped", "ignored", "failed")


def real_node(serve: Any, tmp_path: Path, destination: dict[str, Any] | None = None
              ) -> ServedNode:
    """`umsrep serve` as packaged: the default rules and bundles (a tiny untrained model's
    masks are no chest, and its study is rightly skipped), results to a folder or to
    `destination`."""
    config = node_config(tmp_path / "data", 0, routing={"quiet_seconds": 1})
    if destination is not None:
        config["destinations"]["results"] = destination
    return serve(config)  # type: ignore[no-any-return]


def journal(node: ServedNode, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(node.data_dir / "journal.db")
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def send_as_is(port: int, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """C-STORE the dataset bytes of `path` unchanged, with pynetdicom."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    meta = read_file_meta_info(path)
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", port, ae_title="UMSREP")
    assert assoc.is_established
    try:
        assoc.send_c_store(path)
    finally:
        assoc.release()


def send(node: ServedNode, path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if name in BARE_DATASETS:
        assert storescu(node.port, [path]).returncode == 0
    elif name in DCMTK_CANNOT_READ:
        send_as_is(node.port, path, monkeypatch)
    else:
        dcmsend(node.port, path)


def dcmsend(port: int, path: Path) -> None:
    """dcmsend proposes the file's own transfer syntax and exits 0 on a refusal too; told not
    to check UIDs, it sends non-conformant ones as a PACS forwards them."""
    subprocess.run([DCMSEND, "--no-uid-checks", "-aet", "TESTSCU", "-aec", "UMSREP",
                    "127.0.0.1", str(port), str(path)], capture_output=True, timeout=60,
                   check=True)


def studies(node: ServedNode) -> list[dict[str, Any]]:
    """`umsrep studies --json` once every study has settled and the outbox is idle."""
    def settled() -> list[dict[str, Any]]:
        listed = node.umsrep("studies", "--data-dir", str(node.data_dir), "--json")
        found = list(json.loads(listed.stdout))
        busy = any(s["state"] not in SETTLED or s["outbox"].get("pending") for s in found)
        return [] if busy else found

    return wait_until(settled, timeout=120, interval=0.5)  # type: ignore[no-any-return]


def assert_settled_with_reasons(found: list[dict[str, Any]]) -> None:
    for study in found:
        assert study["state"] != "failed", study
        if study["state"] != "done":
            assert study["reason"], study


def sop_instance_uid(path: Path) -> str:
    """The dataset's SOP Instance UID; the file meta's where pydicom cannot read the dataset
    (GH177's big endian one with undefined lengths, which dcmtk reads and sends)."""
    try:
        return str(pydicom.dcmread(path, stop_before_pixels=True, force=True).SOPInstanceUID)
    except OSError:
        return str(read_file_meta_info(path).MediaStorageSOPInstanceUID)


def corpus_outcomes(node: ServedNode, corpus: Path,
                    monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Send each file alone; its status is the rejection it left in the journal, if any."""
    outcomes = {}
    for path in sorted(p for p in corpus.rglob("*") if p.is_file()):
        name = path.relative_to(corpus).as_posix()
        if name in NOT_SENT:
            continue
        before = len(journal(node, "SELECT id FROM rejections"))
        send(node, path, name, monkeypatch)
        refused = journal(node, f"SELECT status FROM rejections LIMIT -1 OFFSET {before}")
        outcomes[name] = refused[0][0] if refused else SUCCESS
    return outcomes


def test_every_corpus_file_is_stored_or_refused_as_a_pacs_would(
        serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = shared_data("dicom-corpus", "fo-dicom")
    node = real_node(serve, tmp_path)
    outcomes = corpus_outcomes(node, corpus, monkeypatch)
    assert outcomes == {name: REFUSED.get(name, SUCCESS) for name in outcomes}
    stored = {uid for (uid,) in journal(node, "SELECT sop_instance_uid FROM instances")}
    for name, status in outcomes.items():
        if status == SUCCESS:
            assert sop_instance_uid(corpus / name) in stored, name
    found = studies(node)
    assert_settled_with_reasons(found)
    reasons = " ".join(s["reason"] or "" for s in found)
    assert "no pixel data" in reasons  # the character set CRs
    assert "SOPInstanceUID is not a valid UID" in reasons  # 999.999.01.23.45.6789
    done = [s for s in found if s["state"] == "done"]
    assert done, "the Fuji chest CR is processed"
    outputs = sorted((node.data_dir / "results").rglob("*.dcm"))
    assert sorted(pydicom.dcmread(p).Modality for p in outputs) == ["SEG", "SR"] * len(done)
    for path in outputs:
        assert dciodvfy_errors(path) == [], path


# --- reported cases, from corpus files ------------------------------------------------------


def variant_uids(ds: Dataset, name: str) -> None:
    """Valid UIDs of the variant's own, so that each is a study of its own."""
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(ds, keyword, f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, name + keyword).int}")


def write(ds: Dataset, path: Path, syntax: str) -> Path:
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def chest_variants(corpus: Path, out: Path) -> dict[str, Path]:
    """The Fuji chest CR as a Philips one is reported (Pixel Spacing 0\\0, no Imager Pixel
    Spacing), with its spacing only in Imager Pixel Spacing, and as it is (none at all)."""
    paths = {}
    for variant in ("zero", "imager", "none"):
        ds = pydicom.dcmread(corpus / "CR-MONO1-10-chest", force=True)
        variant_uids(ds, f"chest-{variant}")
        if variant == "zero":
            ds.PixelSpacing = [0, 0]
            ds.PatientOrientation = ["L", "F"]
        elif variant == "imager":
            ds.ImagerPixelSpacing = [0.35, 0.35]
        paths[f"chest-{variant}"] = write(ds, out / f"chest-{variant}.dcm",
                                          ImplicitVRLittleEndian)  # as the bare dataset
    return paths


def hex_uid_variants(corpus: Path, out: Path) -> dict[str, Path]:
    """A real CT and the chest CR whose UIDs an anonymiser made 64-character hex strings."""
    paths = {}
    for name, source, syntax in (("ct-hex", "GH1308.dcm", ExplicitVRLittleEndian),
                                 ("cr-hex", "CR-MONO1-10-chest", ImplicitVRLittleEndian)):
        ds = pydicom.dcmread(corpus / source, force=True)
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            setattr(ds, keyword, hashlib.sha256(f"{name}{keyword}".encode()).hexdigest())
        paths[name] = write(ds, out / f"{name}.dcm", syntax)
    return paths


def retired_us_variants(corpus: Path, out: Path) -> dict[str, Path]:
    """GH364's ultrasound image as Ultrasound Image Storage (Retired), as it is (no regions)
    and with a PW Doppler strip's region. Written decoded and without GH364's stray item tag
    (FFFE,E000), which pydicom cannot write back."""
    paths = {}
    for name in ("us-retired", "us-retired-doppler"):
        ds = pydicom.dcmread(corpus / "GH364.dcm")
        del ds[0xFFFEE000]
        ds.decompress()
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.6"
        variant_uids(ds, name)
        if name == "us-retired-doppler":
            add_doppler_region(ds)
        paths[name] = write(ds, out / f"{name}.dcm", ExplicitVRLittleEndian)
    return paths


def test_reported_cases_are_stored_and_processed_or_skipped_with_reasons(
        serve: Any, storescp: Any, tmp_path: Path) -> None:
    corpus = shared_data("dicom-corpus", "fo-dicom")
    pacs: StoreScp = storescp()
    node = real_node(serve, tmp_path, destination={
        "ae_title": "STORESCP", "host": "127.0.0.1", "port": pacs.port})
    variants = {**chest_variants(corpus, tmp_path / "variants"),
                **hex_uid_variants(corpus, tmp_path / "variants"),
                **retired_us_variants(corpus, tmp_path / "variants")}
    for path in variants.values():
        dcmsend(node.port, path)
    assert journal(node, "SELECT status, reason FROM rejections") == []
    spooled = {uid: Path(path) for uid, path in
               journal(node, "SELECT sop_instance_uid, path FROM instances")}
    for name, path in variants.items():
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert spooled[uid].read_bytes()[-1000:] == path.read_bytes()[-1000:], name
        assert spooled[uid].name == f"{file_name(uid)}.dcm"
        assert spooled[uid].name.startswith("x") == name.endswith("-hex")

    found = studies(node)
    assert_settled_with_reasons(found)
    by_variant = {}
    for name, path in variants.items():
        study_uid = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
        [by_variant[name]] = [s for s in found if s["study_instance_uid"] == study_uid]
    states = {name: study["state"] for name, study in by_variant.items()}
    assert states == {"chest-zero": "done", "chest-imager": "done", "chest-none": "done",
                      "cr-hex": "skipped", "ct-hex": "ignored", "us-retired": "ignored",
                      "us-retired-doppler": "done"}
    assert "StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID are not valid UIDs" in \
        by_variant["cr-hex"]["reason"]

    received = pacs.stored()  # SEG and SR of each chest CR; and the US copy with its own
    kinds = sorted(ds.Modality for ds in received.values())
    assert kinds == sorted(["SEG", "SR"] * 4 + ["US"]), kinds
    for path in pacs.out.iterdir():
        assert dciodvfy_errors(path) == [], path.name
        assert overlong_values(pydicom.dcmread(path)) == [], path.name


def relabelled_chest_crs(out: Path) -> list[Path]:
    """`test_outputs_real.real_images` as frontal chest CR files, for a C-STORE to carry;
    one pydicom cannot write back (no file meta to be had) is left out."""
    written = []
    for n, (path, ds) in enumerate(real_images()):
        try:
            as_frontal_chest_cr(ds, path).save_as(out / f"{n}.dcm", enforce_file_format=True)
        except (TypeError, ValueError, NotImplementedError):  # an unknown VR, no file meta
            continue
        written.append(out / f"{n}.dcm")
    return written


@pytest.mark.slow
def test_every_real_image_sent_as_a_chest_cr_ends_processed_or_skipped_with_a_reason(
        tmp_path: Path) -> None:
    """pydicom's own test files (other vendors and toolkits, every transfer syntax) and the
    corpus's, where it is here, relabelled frontal chest CRs and processed by the packaged
    chest bundle: each is stored or refused, and each study ends done or skipped with its
    reason, never failed (an RT image without NumberOfFrames failed its job, and so did pixel
    data no installed decoder reads); every output is dciodvfy-clean. Among them a real
    chest, the shipped NIH sample as a CR, ends done: none of pydicom's images is one (a
    bundle may refuse them all, as 0.7.0 did)."""
    chest = cr_dataset(1, rows=1024, columns=1024)
    files = [*relabelled_chest_crs(tmp_path),
             write(chest, tmp_path / "chest.dcm", ExplicitVRLittleEndian)]
    raw = node_config(tmp_path / "data", 0, routing={"quiet_seconds": 0.5, "rules": [
        {"name": "chest", "match": {"modality": ["CR"]},
         "process": {"pipeline": "cxr", "outputs": ["seg", "sr", "denoised"],
                     "destinations": ["results"]}}]})
    node = in_process_node(raw)
    node.start()
    try:
        stored = sum(result.ok for path in files for result in
                     send_files("127.0.0.1", node.port, [path], called_ae="UMSREP"))
        found = wait_until(lambda: settled(node, stored), timeout=600, interval=0.5)
    finally:
        node.stop()
    assert len(files) > 80 and stored > 0.8 * len(files)
    states = {s.state for s in found}
    assert states <= {"done", "skipped"}, [(s.state, s.reason) for s in found
                                            if s.state not in ("done", "skipped")]
    assert [s.state for s in found if s.study_uid == chest.StudyInstanceUID] == ["done"]
    assert all(s.reason for s in found if s.state == "skipped")
    results = node.config.folder("results")
    assert results is not None
    outputs = sorted(results.rglob("*.dcm"))
    assert outputs
    for path in outputs:
        assert dciodvfy_errors(path) == [], path.name
        assert overlong_values(pydicom.dcmread(path)) == [], path.name
