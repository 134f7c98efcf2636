"""The node as a subprocess receiving from dcmtk's storescu and a pynetdicom SCU."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import ComputedRadiographyImageStorage, Verification

from tests.conftest import ECHOSCU, STORESCU, node_config, storescu, wait_until

pytestmark = pytest.mark.integration

CR = ComputedRadiographyImageStorage


def journal_rows(data_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(data_dir / "journal.db")
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def dataset_bytes(path: Path) -> bytes:
    """The bytes after the file meta: what went over the wire."""
    raw = path.read_bytes()
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    meta_len = meta.FileMetaInformationGroupLength
    return raw[132 + 12 + meta_len:]


def c_store(port: int, dataset_or_path: Any, sop_class: str = CR, *,
            ts: str = ExplicitVRLittleEndian, calling: str = "TESTSCU") -> int:
    ae = AE(ae_title=calling)
    ae.add_requested_context(sop_class, [ts])
    assoc = ae.associate("127.0.0.1", port, ae_title="UMSREP")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(dataset_or_path)
        return int(status.Status)
    finally:
        assoc.release()


def test_storescu_study_is_stored_byte_for_byte(serve: Any, study_files: Any) -> None:
    node = serve()
    files = study_files("cr", count=3)
    result = storescu(node.port, files)
    assert result.returncode == 0, result.stderr
    rows = journal_rows(node.data_dir, "SELECT sop_instance_uid, path, size FROM instances")
    assert len(rows) == 3
    by_uid = {pydicom.dcmread(f).SOPInstanceUID: f for f in files}
    for sop_uid, path, size in rows:
        stored = Path(path)
        assert stored.is_relative_to(node.data_dir / "spool")
        assert stored.stat().st_size == size
        assert dataset_bytes(stored) == dataset_bytes(by_uid[sop_uid])
    echo = subprocess.run([ECHOSCU, "-aec", "UMSREP", "127.0.0.1", str(node.port)],
                          capture_output=True, text=True, timeout=30)
    assert echo.returncode == 0, echo.stderr


def test_unknown_calling_ae_and_host_are_rejected(serve: Any, study_files: Any,
                                                  tmp_path: Path, fault_table: Any) -> None:
    port = 0
    config = node_config(tmp_path / "data", port,
                         node={"callers": [{"ae_title": "PACS1", "host": "127.0.0.1"}]})
    node = serve(config)
    files = study_files("cr")
    rejected = storescu(node.port, files, aet="INTRUDER")
    assert rejected.returncode != 0
    assert "Calling AE Title Not Recognized" in rejected.stderr + rejected.stdout
    wrong_called = storescu(node.port, files, aet="PACS1", aec="NOTUS")
    assert wrong_called.returncode != 0
    accepted = storescu(node.port, files, aet="PACS1")
    assert accepted.returncode == 0, accepted.stderr
    assert len(journal_rows(node.data_dir, "SELECT * FROM instances")) == 1
    assert "association rejected: calling AE 'INTRUDER'" in node.log()
    rejected_rows = journal_rows(node.data_dir, "SELECT calling_ae, status, reason "
                                                "FROM rejections ORDER BY id")
    assert [(r[0], r[1]) for r in rejected_rows] == [("INTRUDER", 0x010103),
                                                     ("PACS1", 0x010107)]
    assert "called AE 'NOTUS'" in rejected_rows[1][2]
    fault_table("a calling AE title not on the list; a called AE title not ours", "rejected "
                "(A-ASSOCIATE-RJ, permanent), logged and journaled", stored_from_them=0)


def test_bad_datasets_get_failure_statuses_and_journal_entries(
        serve: Any, study_files: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        fault_table: Any) -> None:
    node = serve()
    good = study_files("cr", count=1)[0]
    ds = pydicom.dcmread(good)
    # Send files as they are on disk, not decoded and re-encoded by the SCU.
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)

    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert c_store(node.port, truncated) == 0xC000

    no_uid = ds.copy()
    del no_uid.SOPInstanceUID
    no_uid.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"  # the request's UID
    path = tmp_path / "no-uid.dcm"
    no_uid.save_as(path, enforce_file_format=False)
    assert c_store(node.port, path) == 0x0117

    # pynetdicom checks UIDs it sends: let the test send hostile ones on purpose. A PACS
    # stores them; the node too, under names that are hashes of them.
    monkeypatch.setitem(_config.VALIDATORS, "UI", lambda value: (True, ""))
    hostile = ds.copy()
    hostile.SOPInstanceUID = "1.2.3/../../../escape"
    hostile.file_meta.MediaStorageSOPInstanceUID = hostile.SOPInstanceUID
    assert c_store(node.port, hostile) == 0x0000
    hostile_study = ds.copy()
    hostile_study.SOPInstanceUID = "1.2.3.99"
    hostile_study.StudyInstanceUID = "../../etc"
    assert c_store(node.port, hostile_study) == 0x0000
    unprintable = ds.copy()
    unprintable.SOPInstanceUID = "1.2.3.\x1b[2J"  # would clear a terminal showing the log
    assert c_store(node.port, unprintable) == 0x0117
    overlong = ds.copy()  # pynetdicom alone aborts the association on it, with no status
    overlong.SOPInstanceUID = "1.2." + "3" * 82
    assert c_store(node.port, overlong) == 0x0117

    not_storage = ds.copy()
    not_storage.SOPClassUID = "1.2.840.10008.5.1.4.1.1.999"
    not_storage.SOPInstanceUID = "1.2.3.98"
    assert c_store(node.port, not_storage, sop_class="1.2.840.10008.5.1.4.1.1.999") == 0x0122

    # Both were stored: the first then skipped with no reason, the second's job failed (too
    # many values to unpack).
    minus_frames, too_long = pydicom.dcmread(good), pydicom.dcmread(good)
    minus_frames.SOPInstanceUID, minus_frames.NumberOfFrames = "1.2.3.97", -1
    assert c_store(node.port, minus_frames) == 0xC000
    too_long.SOPInstanceUID, too_long.PixelData = "1.2.3.96", ds.PixelData + bytes(2**20)
    assert c_store(node.port, too_long) == 0xC000

    # The node kept serving: a good instance still gets Success.
    assert c_store(node.port, good) == 0x0000
    rejections = journal_rows(node.data_dir,
                              "SELECT status, reason FROM rejections ORDER BY id")
    assert [r[0] for r in rejections] == [0xC000, 0x0117, 0x0117, 0x0117, 0x0122, 0xC000,
                                          0xC000]
    assert "printable ASCII" in rejections[2][1]
    assert rejections[3][1] == "SOPInstanceUID is longer than 64 characters"
    assert rejections[5][1] == "NumberOfFrames not a positive whole number"
    expected = len(ds.PixelData)
    assert rejections[6][1] == (f"pixel data has {expected + 2**20} bytes, its image needs "
                                f"{expected}")
    rows = journal_rows(node.data_dir, "SELECT sop_instance_uid, study_uid, path FROM instances "
                                       "JOIN studies USING (study_key)")
    assert len(rows) == 3
    spool = (node.data_dir / "spool").resolve()
    for sop_uid, study_uid, path in rows:
        stored = Path(path).resolve()
        assert stored.is_relative_to(spool) and stored.is_file()
        assert (stored.name == f"{sop_uid}.dcm") == ("/" not in sop_uid)
        assert (stored.parent.parent.name == study_uid) == ("/" not in study_uid)
    assert not list(tmp_path.rglob("escape*")) and not list(tmp_path.rglob("etc/*.dcm"))
    fault_table("a truncated dataset, no SOP Instance UID, UIDs with ../ or control "
                "characters, an 86-character UID, a SOP class that is no storage, "
                "NumberOfFrames -1, pixel data 1 MB longer than its image", "each refused "
                "with its status and reason in the journal (the ../ UIDs stored under hashed "
                "names), the association going on", statuses=" ".join(
                    f"{r[0]:04X}" for r in rejections), files_escaping_the_spool=0)


def test_limits_disk_mark_and_image_size(serve: Any, study_files: Any, tmp_path: Path) -> None:
    free_mb = shutil.disk_usage(tmp_path).free // 1_000_000
    config = node_config(tmp_path / "data", 0, node={"min_free_disk_mb": free_mb + 10_000})
    node = serve(config)
    files = study_files("cr")
    assert c_store(node.port, files[0]) == 0xA700
    assert not list((node.data_dir / "spool").rglob("*.dcm"))
    node.stop()

    config = node_config(tmp_path / "data2", 0, node={"max_image_pixels": 1000})
    node = serve(config, data_dir=tmp_path / "data2")
    assert c_store(node.port, files[0]) == 0xA700
    reasons = journal_rows(node.data_dir, "SELECT reason FROM rejections")
    assert "exceeds the maximum" in reasons[0][0]


def test_kill_mid_association_then_resend_stores_each_instance_once(
        serve: Any, study_files: Any, tmp_path: Path, fault_table: Any) -> None:
    config = node_config(tmp_path / "data", 0, routing={"quiet_seconds": 60})
    node = serve(config)
    files = study_files("cr", count=50, rows=512, columns=512)
    sender = subprocess.Popen(
        ["/usr/bin/storescu", "-aet", "TESTSCU", "-aec", "UMSREP", "127.0.0.1",
         str(node.port), *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_until(lambda: len(journal_rows(node.data_dir, "SELECT * FROM instances")) >= 10,
               timeout=60, interval=0.01)
    node.stop(signal.SIGKILL)
    sender.wait(timeout=60)
    stored_before = len(journal_rows(node.data_dir, "SELECT * FROM instances"))
    assert 10 <= stored_before < 50

    restarted = serve(node_config(tmp_path / "data", 0, routing={"quiet_seconds": 60}),
                      data_dir=node.data_dir)
    result = storescu(restarted.port, files)
    assert result.returncode == 0, result.stderr
    rows = journal_rows(restarted.data_dir,
                        "SELECT sop_instance_uid, path, study_key FROM instances")
    assert len(rows) == 50
    assert len({r[0] for r in rows}) == 50
    assert len({r[2] for r in rows}) == 1  # still the same study version
    spooled = sorted((restarted.data_dir / "spool").rglob("*"))
    assert sorted(Path(r[1]) for r in rows) == [p for p in spooled if p.is_file()]
    for _, path, _ in rows:
        pydicom.dcmread(path)  # every stored file is whole
    fault_table("SIGKILL of the node mid-association (50 instances), then the sender "
                "resends all", "what had Success kept, the rest stored on the resend, in "
                "the same study version", stored_before_the_kill=stored_before,
                stored_exactly_once="50 of 50")


def test_concurrent_senders_each_instance_stored_once(serve: Any, study_files: Any,
                                                      fault_table: Any) -> None:
    node = serve()
    batches = [study_files("cr", count=50, seed=seed, rows=64, columns=64)
               for seed in range(8)]
    senders = [subprocess.Popen([STORESCU, "-aet", f"SENDER{n}", "-aec", "UMSREP",
                                 "127.0.0.1", str(node.port), *map(str, files)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
               for n, files in enumerate(batches)]
    assert [p.wait(timeout=120) for p in senders] == [0] * 8
    rows = journal_rows(node.data_dir, "SELECT sop_instance_uid, path FROM instances")
    sent = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f
            for files in batches for f in files}
    assert sorted(r[0] for r in rows) == sorted(sent)  # 400, each once
    assert all(dataset_bytes(Path(p)) == dataset_bytes(sent[uid]) for uid, p in rows)
    fault_table("8 senders at once, 50 instances each", "each instance stored once, "
                "byte for byte", stored_exactly_once=f"{len(rows)} of {len(sent)}",
                bytes_lost=0)


def test_single_cr_completes_on_release_and_late_instance_reopens(
        serve: Any, study_files: Any, tmp_path: Path) -> None:
    config = node_config(tmp_path / "data", 0, routing={"quiet_seconds": 60},
                         broker=None)
    node = serve(config)
    files = study_files("cr", count=2)
    assert storescu(node.port, files[:1]).returncode == 0
    states = wait_until(lambda: journal_rows(
        node.data_dir, "SELECT state FROM studies WHERE state != 'receiving'"))
    key1 = journal_rows(node.data_dir, "SELECT study_key FROM studies")[0][0]
    assert states[0][0] in ("complete", "queued", "processing", "failed", "done")
    assert storescu(node.port, files[1:]).returncode == 0

    def two_versions() -> list[str] | None:
        rows = journal_rows(node.data_dir, "SELECT study_key FROM studies ORDER BY version")
        return [r[0] for r in rows] if len(rows) == 2 else None

    keys = wait_until(two_versions)
    assert keys[0] == key1 and keys[1].endswith("@2")
    events = journal_rows(node.data_dir,
                          f"SELECT detail FROM events WHERE study_key = '{keys[1]}'")
    assert events[0][0] == f"reopened after {key1}"


def test_quiet_period_completes_multi_image_study(serve: Any, study_files: Any,
                                                  tmp_path: Path) -> None:
    config = node_config(tmp_path / "data", 0, routing={"quiet_seconds": 1.0})
    node = serve(config)
    assert storescu(node.port, study_files("ct", count=3)).returncode == 0
    state = wait_until(lambda: journal_rows(
        node.data_dir, "SELECT state, reason FROM studies WHERE state = 'ignored'"), timeout=15)
    assert state[0][1] == "ignored by store-only"
    events = [r[0] for r in journal_rows(node.data_dir, "SELECT state FROM events")]
    assert events == ["receiving", "complete", "ignored"]


def test_studies_json_has_no_patient_data_unless_asked(serve: Any, study_files: Any) -> None:
    node = serve()
    files = study_files("cr", count=1)
    secret = pydicom.dcmread(files[0])
    secret.PatientName = "SECRET^PERSON"
    secret.PatientID = "ID-7777"
    secret.save_as(files[0])
    assert storescu(node.port, files).returncode == 0
    listed = node.umsrep("studies", "--data-dir", str(node.data_dir), "--json")
    assert listed.returncode == 0, listed.stderr
    studies = json.loads(listed.stdout)
    assert len(studies) == 1
    study = studies[0]
    assert study["study_instance_uid"] == secret.StudyInstanceUID
    assert study["instances"] == 1 and study["state"]
    assert {"route", "created_at", "updated_at", "timestamps"} <= set(study)
    assert "SECRET" not in listed.stdout and "7777" not in listed.stdout
    table = node.umsrep("studies", "--data-dir", str(node.data_dir))
    assert secret.StudyInstanceUID in table.stdout and "SECRET" not in table.stdout
    with_phi = node.umsrep("studies", "--data-dir", str(node.data_dir), "--phi")
    assert "SECRET^PERSON" in with_phi.stdout
    node.stop()
    assert "SECRET" not in node.log() and "7777" not in node.log()


def test_echo_with_pynetdicom_and_verification(serve: Any) -> None:
    node = serve()
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="UMSREP")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assoc.release()
