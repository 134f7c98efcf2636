"""The outbox deliverer against real peers: retries, backoff, give-up, folders, the thread."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from pacs_node.attrs import InstanceAttrs
from pacs_node.config import Config
from pacs_node.journal import Journal
from pacs_node.outbox import Deliverer
from pacs_node.spool import TEMP_SUFFIX
from tests.conftest import free_port, wait_until
from tests.integration.conftest import sop_uid

pytestmark = pytest.mark.integration

OUT_OF_RESOURCES = 0xA700


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    journal = Journal(tmp_path / "data" / "journal.db")
    yield journal
    journal.close()


def deliverer(journal: Journal, tmp_path: Path, destinations: dict[str, Any],
              **retry: Any) -> Deliverer:
    config = Config.model_validate({"node": {"data_dir": tmp_path / "data"},
                                    "destinations": destinations, "retry": retry})
    return Deliverer(journal, config, calling_ae="UMSREP")


def peer(port: int, ae_title: str = "ANY-SCP") -> dict[str, Any]:
    return {"pacs": {"ae_title": ae_title, "host": "127.0.0.1", "port": port}}


def add_study(journal: Journal, files: list[Path]) -> str:
    """Record the files as received instances; returns their study key."""
    key = ""
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        key = journal.add_instance(
            study_uid=ds.StudyInstanceUID, series_uid=ds.SeriesInstanceUID,
            sop_instance_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID,
            transfer_syntax=ds.file_meta.TransferSyntaxUID, path=path,
            size=path.stat().st_size, attrs=InstanceAttrs())
    return key


def rows(journal: Journal) -> list[dict[str, Any]]:
    return journal.outbox()


def test_items_are_sent_once_and_marked_sent(scp: Any, journal: Journal, tmp_path: Path,
                                             mixed_files: list[Path]) -> None:
    pacs = scp()
    d = deliverer(journal, tmp_path, peer(pacs.port))
    journal.enqueue("study@1", "pacs", mixed_files)
    assert d.run_once() == len(mixed_files)
    assert d.run_once() == 0
    assert sorted(r.sop_instance_uid for r in pacs.received) == sorted(map(sop_uid, mixed_files))
    assert pacs.associations == 1
    assert {(r["state"], r["attempts"]) for r in rows(journal)} == {("sent", 1)}


def test_peer_down_backs_off_then_delivers_once_up(storescp: Any, journal: Journal,
                                                   tmp_path: Path,
                                                   mixed_files: list[Path]) -> None:
    port = free_port()  # storescp starts there later
    d = deliverer(journal, tmp_path, peer(port, "STORESCP"), first_delay_s=1, max_delay_s=60)
    journal.enqueue("study@1", "pacs", mixed_files[:2])
    now = time.time()
    assert d.run_once(now) == 0
    first = rows(journal)
    assert {(r["state"], r["attempts"]) for r in first} == {("pending", 1)}
    assert all("connection failed" in r["last_error"] for r in first)
    assert first[0]["next_attempt_at"] == first[1]["next_attempt_at"]  # the batch stays one
    delay1 = first[0]["next_attempt_at"] - now
    assert 0.9 <= delay1 <= 1

    assert d.run_once(now) == 0  # not due yet: no attempt
    assert rows(journal)[0]["attempts"] == 1

    retry_at = first[0]["next_attempt_at"]
    assert d.run_once(retry_at) == 0
    second = rows(journal)[0]
    assert second["attempts"] == 2
    assert 1.8 <= second["next_attempt_at"] - retry_at <= 2  # doubled

    pacs = storescp(port)
    assert d.run_once(second["next_attempt_at"]) == 2
    assert {(r["state"], r["attempts"]) for r in rows(journal)} == {("sent", 3)}
    assert set(pacs.stored()) == {sop_uid(p) for p in mixed_files[:2]}


def test_gives_up_after_max_attempts(journal: Journal, tmp_path: Path,
                                     mixed_files: list[Path]) -> None:
    d = deliverer(journal, tmp_path, peer(free_port()), first_delay_s=1, max_attempts=2)
    journal.enqueue("study@1", "pacs", mixed_files[:1])
    now = time.time()
    d.run_once(now)
    d.run_once(now + 10)
    [row] = rows(journal)
    assert (row["state"], row["attempts"]) == ("failed", 2)
    assert "connection failed" in row["last_error"]
    assert d.run_once(now + 1e6) == 0 and rows(journal)[0]["attempts"] == 2


def test_missing_source_file_fails_at_once(scp: Any, journal: Journal, tmp_path: Path,
                                           mixed_files: list[Path]) -> None:
    pacs = scp()
    d = deliverer(journal, tmp_path, peer(pacs.port))
    journal.enqueue("study@1", "pacs", [tmp_path / "gone.dcm", mixed_files[0]])
    assert d.run_once() == 1
    missing, present = rows(journal)
    assert (missing["state"], missing["attempts"]) == ("failed", 1)
    assert "source file missing" in missing["last_error"]
    assert present["state"] == "sent"


def test_refused_file_is_retried_others_sent(scp: Any, journal: Journal, tmp_path: Path,
                                             mixed_files: list[Path]) -> None:
    pacs = scp(status=lambda n: OUT_OF_RESOURCES if n == 1 else 0)
    d = deliverer(journal, tmp_path, peer(pacs.port))
    journal.enqueue("study@1", "pacs", mixed_files[:3])
    now = time.time()
    assert d.run_once(now) == 2
    states = [(r["state"], r["attempts"]) for r in rows(journal)]
    assert states == [("sent", 1), ("pending", 1), ("sent", 1)]
    refused = rows(journal)[1]
    assert "0xA700" in refused["last_error"] and refused["next_attempt_at"] > now
    assert d.run_once(refused["next_attempt_at"]) == 1
    assert len(pacs.received) == 4


def test_association_lost_midway_keeps_what_was_stored(scp: Any, journal: Journal,
                                                       tmp_path: Path,
                                                       mixed_files: list[Path]) -> None:
    def abort_second(event: Any, n: int) -> None:
        if n == 1:
            event.assoc.abort()

    pacs = scp(on_store=abort_second)
    d = deliverer(journal, tmp_path, peer(pacs.port))
    journal.enqueue("study@1", "pacs", mixed_files[:3])
    assert d.run_once() == 1
    first, *rest = rows(journal)
    assert first["state"] == "sent"
    assert [(r["state"], r["attempts"]) for r in rest] == [("pending", 1)] * 2
    assert all("association lost" in r["last_error"] for r in rest)


def test_folder_destination_copies_atomically(journal: Journal, tmp_path: Path,
                                              mixed_files: list[Path]) -> None:
    d = deliverer(journal, tmp_path, {"archive": {"folder": "archive"}})
    key = add_study(journal, mixed_files[:1])
    journal.enqueue(key, "archive", mixed_files[:1])
    journal.enqueue("no/such@study", "archive", mixed_files[1:2])  # unknown key: its name
    assert d.run_once() == 2
    folder = tmp_path / "data" / "archive"  # relative folders are under the data dir
    study_uid = str(pydicom.dcmread(mixed_files[0]).StudyInstanceUID)
    copied = folder / study_uid / mixed_files[0].name
    assert copied.read_bytes() == mixed_files[0].read_bytes()
    assert (folder / "no_such@study" / mixed_files[1].name).is_file()
    assert not list(folder.rglob(f"*{TEMP_SUFFIX}"))
    assert {r["state"] for r in rows(journal)} == {"sent"}


def test_thread_delivers_when_woken(scp: Any, journal: Journal, tmp_path: Path,
                                    mixed_files: list[Path]) -> None:
    pacs = scp()
    d = deliverer(journal, tmp_path, peer(pacs.port))
    d.start()
    try:
        journal.enqueue("study@1", "pacs", mixed_files)
        d.wake()
        wait_until(lambda: {r["state"] for r in rows(journal)} == {"sent"}, timeout=10)
    finally:
        d.stop()
    assert len(pacs.received) == len(mixed_files)
