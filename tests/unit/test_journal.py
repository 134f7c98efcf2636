"""The journal's state machine, versions, jobs and outbox, on a real SQLite file."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from pacs_node.attrs import InstanceAttrs
from pacs_node.config import Process
from pacs_node.journal import Journal
from umsrep_core.errors import ClaimLost


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "journal.db")


def add(journal: Journal, sop: str, study: str = "1.2.3") -> str:
    return journal.add_instance(study_uid=study, series_uid=f"{study}.1", sop_instance_uid=sop,
                                sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
                                transfer_syntax="1.2.840.10008.1.2.1", path=Path(f"/s/{sop}"),
                                size=10, attrs=InstanceAttrs(modality="CR"))


def test_wal_mode_and_resend_stores_once(journal: Journal) -> None:
    assert journal._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    key = add(journal, "1.2.3.1.1")
    assert add(journal, "1.2.3.1.1") == key
    assert [i.sop_instance_uid for i in journal.instances(key)] == ["1.2.3.1.1"]
    assert journal.study(key).state == "receiving"  # type: ignore[union-attr]


def test_late_instance_reopens_a_complete_study_as_a_new_version(journal: Journal) -> None:
    key = add(journal, "1.2.3.1.1")
    assert journal.set_state(key, "complete", expect=("receiving",))
    assert not journal.set_state(key, "complete", expect=("receiving",))  # only once
    key2 = add(journal, "1.2.3.1.2")
    assert (key, key2) == ("1.2.3@1", "1.2.3@2")
    assert journal.events(key2)[0]["detail"] == "reopened after 1.2.3@1"
    assert len(journal.instances(key)) == 1 and len(journal.instances(key2)) == 1


def routed(journal: Journal, sop: str) -> str:
    """A study of one instance, routed: a job queued (its message sent) and an outbox item."""
    key = add(journal, sop)
    journal.set_state(key, "complete", expect=("receiving",))
    journal.add_job(key, "chest", Process(pipeline="cxr"))
    journal.job_dispatched(key, "chest")
    journal.enqueue(key, "pacs", [Path(f"/s/{sop}")])
    journal.set_state(key, "queued")
    return key


def test_a_resend_supersedes_a_routing_that_nothing_was_done_for(journal: Journal,
                                                                 fault_table: Any) -> None:
    key = routed(journal, "1.2.3.1.1")
    assert add(journal, "1.2.3.1.2") == key  # the same version receives again
    study = journal.study(key)
    assert study is not None and study.state == "receiving" and study.route is None
    assert not journal.jobs(key) and not journal.outbox(key)
    assert [i.sop_instance_uid for i in journal.instances(key)] == ["1.2.3.1.1", "1.2.3.1.2"]
    assert "routing undone" in journal.events(key)[-1]["detail"]
    assert not journal.start_job(key, "chest")  # its message, when a worker gets it
    fault_table("after a crash, the resend arrives once the partial study was routed, before "
                "its job started", "its routing undone (jobs, unsent outbox items): the same "
                "version receives the rest; its message, already sent, starts nothing",
                versions=1)


@pytest.mark.parametrize("touch", ["job started", "item sent", "item tried"])
def test_a_version_something_was_done_for_is_followed_by_a_new_one(journal: Journal,
                                                                  touch: str) -> None:
    key = routed(journal, "1.2.3.1.1")
    item = journal.outbox(key)[0]["id"]
    if touch == "job started":
        assert journal.start_job(key, "chest")
    elif touch == "item sent":
        journal.sent(item)
    else:
        journal.send_failed(item, "refused", retry_at=0.0)
    assert add(journal, "1.2.3.1.2") == "1.2.3@2"
    assert journal.jobs(key) and len(journal.instances(key)) == 1


def test_study_state_follows_its_jobs(journal: Journal) -> None:
    key = add(journal, "1.2.3.1.1")
    journal.add_job(key, "a", Process(pipeline="cxr"))
    journal.add_job(key, "b", Process(pipeline="cxr"))
    journal.set_state(key, "queued")
    journal.start_job(key, "a")
    assert journal.study(key).state == "processing"  # type: ignore[union-attr]
    journal.finish_job(key, "a")
    assert journal.study(key).state == "queued"  # type: ignore[union-attr]
    journal.start_job(key, "b")
    journal.finish_job(key, "b", error="InferenceError: bad pixels")
    study = journal.study(key)
    assert study is not None and study.state == "failed"
    assert "bad pixels" in (study.reason or "")


def test_requeue_after_stop(journal: Journal) -> None:
    key = add(journal, "1.2.3.1.1")
    journal.add_job(key, "a", Process(pipeline="cxr"))
    journal.job_dispatched(key, "a")
    journal.start_job(key, "a")
    assert journal.jobs(state="queued") == []  # what dispatch asks for
    assert journal.requeue_jobs() == 1
    job = journal.jobs(key)[0]
    assert job["state"] == "queued" and job["dispatched_at"] is None
    assert journal.jobs(state="queued") == [job] == journal.jobs(key, "queued")


def test_a_silent_try_loses_its_job_and_can_end_nothing(journal: Journal) -> None:
    key = add(journal, "1.2.3.1.1")
    journal.add_job(key, "a", Process(pipeline="cxr"))
    journal.job_dispatched(key, "a")
    first = journal.start_job(key, "a")
    assert first is not None and journal.heartbeat(key, "a", first)
    assert journal.requeue_silent(timeout_s=60) == []  # it beat just now
    journal._db.execute("UPDATE jobs SET heartbeat_at = heartbeat_at - 61")
    assert journal.requeue_silent(timeout_s=60) == [(key, "a")]
    job = journal.jobs(key)[0]
    assert job["state"] == "queued" and job["dispatched_at"] is None  # dispatched again
    assert journal.study(key).state == "queued"  # type: ignore[union-attr]
    assert "no sign of life from the worker of job a for 60 s" in journal.events(key)[-1][
        "detail"]
    assert not journal.heartbeat(key, "a", first)  # the silent try hears its job is gone
    second = journal.start_job(key, "a")
    assert second is not None and second != first
    assert journal.lost_tries(key, "a") == 2  # the silent try counts as lost while one runs
    with pytest.raises(ClaimLost):  # the silent try comes back: it ends nothing
        journal.finish_job(key, "a", error="OSError: network unreachable", claim=first)
    assert journal.jobs(key)[0]["state"] == "processing"
    journal.finish_job(key, "a", claim=second)
    assert journal.jobs(key)[0]["state"] == "done"
    assert journal.lost_tries(key, "a") == 1
    with pytest.raises(ClaimLost):  # nor after the job ended
        journal.finish_job(key, "a", error="late", claim=first)
    assert journal.study(key).state == "done"  # type: ignore[union-attr]


def test_outbox_dedupes_and_backs_off(journal: Journal) -> None:
    key = add(journal, "1.2.3.1.1")
    assert journal.enqueue(key, "pacs", [Path("/s/a"), Path("/s/b")]) == 2
    assert journal.enqueue(key, "pacs", [Path("/s/a")]) == 0
    items = journal.due()
    assert [i.path for i in items] == ["/s/a", "/s/b"]
    journal.sent(items[0].id)
    journal.send_failed(items[1].id, "refused", retry_at=1e18)
    assert journal.due() == []
    journal.send_failed(items[1].id, "refused", retry_at=None)
    states = {o["path"]: (o["state"], o["attempts"]) for o in journal.outbox(key)}
    assert states == {"/s/a": ("sent", 1), "/s/b": ("failed", 2)}


def test_concurrent_writers_from_threads(journal: Journal) -> None:
    threads = [threading.Thread(target=lambda n=n: [add(journal, f"1.2.3.{n}.{i}")
                                                     for i in range(20)]) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert journal.counts(["1.2.3@1"]) == {"1.2.3@1": 80}


def test_modalities_of_each_study_come_from_its_series(journal: Journal) -> None:
    add(journal, "1.2.3.1")
    journal.add_instance(study_uid="1.2.3", series_uid="1.2.3.2", sop_instance_uid="1.2.3.2.1",
                         sop_class_uid="1.2.840.10008.5.1.4.1.1.88.22",
                         transfer_syntax="1.2.840.10008.1.2.1", path=Path("/s/sr"), size=10,
                         attrs=InstanceAttrs(modality="SR"))
    add(journal, "4.5.6.1", study="4.5.6")
    assert journal.modalities(["1.2.3@1", "4.5.6@1"]) == {"1.2.3@1": ["CR", "SR"],
                                                        "4.5.6@1": ["CR"]}


def test_a_listing_counts_only_the_studies_of_its_page(journal: Journal) -> None:
    """Counts and modalities cover the keys asked for, however many (queries of 500 keys at
    most), and nothing else: a page of a large journal never scans all of it."""
    for study in ("1.2.3", "4.5.6", "7.8.9"):
        add(journal, f"{study}.1", study=study)
        add(journal, f"{study}.2", study=study)
    page = [f"0.{n}@1" for n in range(1200)] + ["7.8.9@1", "1.2.3@1"]  # unknown keys first
    assert journal.counts(page) == {"1.2.3@1": 2, "7.8.9@1": 2}
    assert journal.modalities(page) == {"1.2.3@1": ["CR"], "7.8.9@1": ["CR"]}
    assert journal.counts([]) == {} and journal.modalities([]) == {}


def test_failed_items_can_be_retried(journal: Journal) -> None:
    key = add(journal, "1.2.3.1.1")
    journal.enqueue(key, "pacs", [Path("/s/a")])
    journal.enqueue(key, "other", [Path("/s/a")])
    for item in journal.due():
        journal.send_failed(item.id, "down", retry_at=None)
    assert journal.due() == []
    assert journal.retry_failed("pacs") == 1
    assert [(i.destination, i.attempts) for i in journal.due()] == [("pacs", 0)]
    assert journal.retry_failed() == 1


def test_stage_timings_are_summed_per_stage_and_other_notes_ignored(journal: Journal) -> None:
    key = add(journal, "1.2.3.1.1")
    journal.note_stage(key, "load", 0.25, "bundle cxr 0.1.0")
    journal.note_stage(key, "inference", 0.5)
    journal.note_stage(key, "inference", 0.125)
    journal.note(key, "findings", '{"ctr": 0.4}')
    journal.note(key, "retry", "job cxr try 1 of 5 failed, to be tried again: 2 s")
    assert journal.stage_seconds(key) == {"load": 0.25, "inference": 0.625}
    later = journal.events(key)[-1]["at"] + 1
    assert journal.stage_seconds(key, since=later) == {}


def test_a_job_keeps_its_rules_settings_and_an_older_journal_gains_the_column(
        tmp_path: Path) -> None:
    old = sqlite3.connect(tmp_path / "journal.db")  # jobs as versions before kept them
    old.execute("CREATE TABLE jobs (study_key TEXT NOT NULL, route TEXT NOT NULL, queue TEXT "
                "NOT NULL, state TEXT NOT NULL, dispatched_at REAL, started_at REAL, "
                "finished_at REAL, error TEXT, PRIMARY KEY (study_key, route))")
    old.execute("INSERT INTO jobs VALUES ('1.2.3@1', 'chest', 'cxr', 'queued', NULL, NULL, "
                "NULL, NULL)")
    old.commit()
    old.close()
    journal = Journal(tmp_path / "journal.db")
    assert journal.job_process("1.2.3@1", "chest") is None  # the worker asks the config
    key = add(journal, "1.2.3.9.1", study="1.2.3.9")
    routed = Process(pipeline="cxr", bundle="/opt/models/cxr-v2", outputs=["sr"])
    journal.add_job(key, "chest-v2", routed)
    assert journal.job_process(key, "chest-v2") == routed
