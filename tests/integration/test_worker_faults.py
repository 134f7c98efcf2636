"""Faults around the Celery worker: transient errors retried with backoff, permanent ones
failed once, a worker child killed mid-task, a study that kills every worker that takes it,
and the worker's Prometheus metrics.

The jobs' try logic (`run_job`) first with the journal alone, then through a real node, a
redis-server of the test's own and real `celery -A workers.app worker` processes.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sqlite3
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from pacs_node import dispatch, samples
from pacs_node.config import Process
from pacs_node.dispatch import LOST_TRIES, run_job
from pacs_node.journal import Journal, journal_path
from tests.conftest import ServedNode, free_port, storescu, wait_until
from tests.integration import test_celery
from tests.integration.test_celery import config_with, outputs
from tests.unit.test_errors_transient import undecodable_cr
from tests.unit.test_journal import add
from umsrep_core.errors import InferenceError, TransientError
from workers.tasks import MAX_RETRIES

pytestmark = pytest.mark.integration

ATTEMPTS = MAX_RETRIES + 1

# test_celery's fixtures: a `celery -A workers.app` process, a redis-server of the test's own
worker = test_celery.worker
own_redis = test_celery.own_redis


def states(journal: Journal, key: str) -> list[str]:
    return [e["state"] for e in journal.events(key)]


@pytest.fixture
def job(tmp_path: Path) -> Iterator[tuple[Journal, str]]:
    journal = Journal(tmp_path / "journal.db")
    key = add(journal, "1.2.3.9.1")
    journal.add_job(key, "chest", Process(pipeline="cxr"))
    yield journal, key
    journal.close()


def test_a_transient_error_is_noted_and_raised_until_the_last_try(
        job: tuple[Journal, str]) -> None:
    journal, key = job

    def disk_full(*_: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    for attempt in (1, 2):
        with pytest.raises(TransientError, match="No space left on device"):
            run_job(journal, None, key, "chest", disk_full,  # type: ignore[arg-type]
                    attempt=attempt, attempts=3)
        assert journal.jobs(key)[0]["state"] == "processing"  # not failed while tries are left
    assert run_job(journal, None, key, "chest", disk_full,  # type: ignore[arg-type]
                   attempt=3, attempts=3) == "failed"
    job_row = journal.jobs(key)[0]
    assert job_row["state"] == "failed"
    assert job_row["error"] == ("OSError: [Errno 28] No space left on device "
                                "(transient; gave up after try 3 of 3)")
    retries = [e["detail"] for e in journal.events(key) if e["state"] == "retry"]
    assert retries == [f"job chest try {n} of 3 failed, to be tried again: OSError: [Errno 28] "
                       "No space left on device" for n in (1, 2)]
    assert states(journal, key).count("failed") == 1


def test_a_permanent_error_fails_the_job_on_its_first_try(job: tuple[Journal, str]) -> None:
    journal, key = job

    def corrupt_bundle(*_: Any) -> None:
        raise InferenceError("bundle cxr: model.pt is not a torch checkpoint")

    assert run_job(journal, None, key, "chest", corrupt_bundle,  # type: ignore[arg-type]
                   attempt=1, attempts=3) == "failed"
    assert journal.jobs(key)[0]["error"] == ("InferenceError: bundle cxr: model.pt is not a "
                                             "torch checkpoint")
    assert "retry" not in states(journal, key)


def test_a_job_whose_tries_die_unfinished_is_failed_not_tried_for_ever(
        job: tuple[Journal, str]) -> None:
    journal, key = job

    def disk_full(*_: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def dies(*_: Any) -> None:
        raise KeyboardInterrupt  # the process ends mid-try: nothing after the start is noted

    with pytest.raises(TransientError):
        run_job(journal, None, key, "chest", disk_full,  # type: ignore[arg-type]
                attempt=1, attempts=3)
    assert journal.lost_tries(key, "chest") == 0  # a try that ended with a retry noted
    for lost in range(1, LOST_TRIES + 1):
        with pytest.raises(KeyboardInterrupt):
            run_job(journal, None, key, "chest", dies)  # type: ignore[arg-type]
        assert journal.lost_tries(key, "chest") == lost
    handled: list[str] = []
    assert run_job(journal, None, key, "chest",
                   lambda *args: handled.append(args[2])) == "failed"  # type: ignore[arg-type]
    assert handled == []  # not tried a fourth time
    [job_row] = journal.jobs(key)
    assert job_row["error"] == ("TriesLost: 3 tries died with their process before they ended "
                                "(a worker killed or out of memory, the node stopped): not "
                                "tried again")
    assert journal.study(key).state == "failed"  # type: ignore[union-attr]


def test_a_try_that_was_silent_too_long_drops_its_outcome_and_heartbeats_while_it_runs(
        job: tuple[Journal, str], monkeypatch: pytest.MonkeyPatch) -> None:
    journal, key = job
    monkeypatch.setattr(dispatch, "HEARTBEAT_S", 0.05)
    beats: list[float] = []

    def silent_then_back(*_: Any) -> None:
        """Beats for a while, then is cut off so long that the node gives its job away, and
        another try ends it before this one comes back."""
        wait_until(lambda: beats.append(journal.jobs(key)[0]["heartbeat_at"]) or
                   len(set(beats)) >= 3, timeout=5, interval=0.05)
        monkeypatch.setattr(journal, "heartbeat", lambda *_: True)  # its beats get nowhere
        time.sleep(4 * dispatch.HEARTBEAT_S)  # one on its way when they stopped has landed
        journal._db.execute("UPDATE jobs SET heartbeat_at = heartbeat_at - 3600")
        assert journal.requeue_silent(timeout_s=60) == [(key, "chest")]
        assert run_job(journal, None, key, "chest", lambda *_: None) == "done"

    assert run_job(journal, None, key, "chest", silent_then_back) is None  # type: ignore[arg-type]
    [job_row] = journal.jobs(key)
    assert job_row["state"] == "done" and job_row["error"] is None
    assert states(journal, key).count("done") == 1  # the silent try's outcome is dropped
    assert journal.events(key)[-1]["detail"] == "job chest done"


# --- through a real worker --------------------------------------------------------------------


@contextmanager
def journal_locked(data_dir: Path) -> Iterator[None]:
    """Hold the journal's write lock, as a stuck writer of another process would."""
    db = sqlite3.connect(journal_path(data_dir), isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        db.execute("ROLLBACK")
        db.close()


def children(pid: int) -> list[int]:
    """The live processes whose parent is `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


@dataclass
class Site:
    """A node sending to a redis-server of the test's own, and its journal, read here."""

    node: ServedNode
    redis: redis.Redis
    journal: Journal


@pytest.fixture
def site(serve: Any, own_redis: Any, tmp_path: Path) -> Iterator[Site]:
    own_redis()
    config = config_with(tmp_path, "data", broker=True)
    config["broker"] = {"url": own_redis.url, "result_backend": own_redis.url}
    node = serve(config, data_dir=tmp_path / "data")
    journal = Journal(journal_path(node.data_dir))
    yield Site(node, redis.Redis.from_url(own_redis.url), journal)
    journal.close()


def settled(journal: Journal, count: int) -> list[Any]:
    studies = journal.studies()
    ended = [s for s in studies if s.state in ("done", "failed", "skipped")]
    return studies if len(studies) == count and len(ended) == count else []


def metrics_env(tmp_path: Path) -> tuple[int, dict[str, str]]:
    """A port for a worker's metrics, and the environment that asks for them."""
    port = free_port()
    (tmp_path / "metrics").mkdir()
    return port, {"UMSREP_WORKER_METRICS_PORT": str(port),
                  "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}


def metrics(port: int, name: str, label: str) -> dict[str, float]:
    """The samples `name` on the worker's metrics endpoint, by the value of `label`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {s.labels[label]: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == name and s.labels["pipeline"] == "cxr"}


@pytest.mark.slow
def test_a_locked_journal_is_retried_with_backoff_and_the_study_ends_done(
        site: Site, worker: Any, tmp_path: Path) -> None:
    node, journal = site.node, site.journal
    files = samples.write_study(tmp_path / "cr", "cr", 21, rows=256, columns=256)
    assert storescu(node.port, files).returncode == 0
    wait_until(lambda: site.redis.llen("cxr") == 1)  # sent; no worker yet
    [study] = journal.studies()
    port, env = metrics_env(tmp_path)
    with journal_locked(node.data_dir):
        worker(node.config_path, env=env)
        # The job cannot start: SQLite waits its busy timeout (30 s), then the try fails.
        wait_until(lambda: "database is locked" in (tmp_path / "worker.log").read_text(),
                   timeout=120)
        assert journal.jobs(study.study_key)[0]["state"] == "queued"
    wait_until(lambda: settled(journal, 1), timeout=60)
    assert journal.study(study.study_key).state == "done"  # type: ignore[union-attr]
    events = journal.events(study.study_key)
    [retry] = [e["detail"] for e in events if e["state"] == "retry"]
    assert retry == (f"job chest try 1 of {ATTEMPTS} failed, to be tried again: "
                     "OperationalError: database is locked")
    timeline = [e["state"] for e in events if e["state"] in ("retry", "processing", "done",
                                                               "failed")]
    assert timeline == ["retry", "processing", "done"]  # the first try never started
    wait_until(lambda: len(outputs(node.data_dir)) == 2)  # delivered by the node
    assert metrics(port, "umsrep_tasks_total", "outcome") == {"retried": 1.0, "done": 1.0}


@pytest.mark.slow
def test_each_outcome_once_and_the_worker_metrics_count_it(
        site: Site, worker: Any, tmp_path: Path) -> None:
    """Done; skipped, for an image no decoder reads (its own defect); failed on the first
    try, for an instance lost from the spool (the node's: it stored it, and it is gone)."""
    node, journal = site.node, site.journal
    good = samples.write_study(tmp_path / "good", "cr", 22, rows=256, columns=256)
    lost = samples.write_study(tmp_path / "lost", "cr", 24, rows=256, columns=256)
    bad = samples.write(undecodable_cr(23), tmp_path / "bad.dcm")
    sent = storescu(node.port, [*good, bad, *lost], extra=("-xr",))  # RLE goes as it is
    assert sent.returncode == 0
    wait_until(lambda: site.redis.llen("cxr") == 3)  # queued; no worker yet
    lost_uid = str(pydicom.dcmread(lost[0]).StudyInstanceUID)
    [lost_key] = [s.study_key for s in journal.studies() if s.study_uid == lost_uid]
    [instance] = journal.instances(lost_key)
    Path(instance.path).unlink()
    port, env = metrics_env(tmp_path)
    worker(node.config_path, env=env)
    studies = {s.study_key: s for s in wait_until(lambda: settled(journal, 3), timeout=120)}
    by_state = {s.state: s for s in studies.values()}
    assert sorted(by_state) == ["done", "failed", "skipped"]
    assert by_state["failed"].study_key == lost_key
    [job] = journal.jobs(lost_key)
    # Quoted values never reach the journal: they might be a patient's (umsrep_core.phi).
    assert job["error"] == "FileNotFoundError: [Errno 2] No such file or directory: '…'"
    skipped = by_state["skipped"]
    assert "cannot decode pixel data" in (skipped.reason or "")
    for key in (lost_key, skipped.study_key):
        assert states(journal, key).count("processing") == 1  # one try
        assert "retry" not in states(journal, key)

    assert metrics(port, "umsrep_tasks_total", "outcome") == {"done": 1.0, "skipped": 1.0,
                                                              "failed": 1.0}
    # Celery (and Flower) say the same: a failed task with the reason, a result that expires.
    results = {key: json.loads(site.redis.get(key) or "{}")
               for key in site.redis.keys("celery-task-meta-*")}
    assert sorted(r["status"] for r in results.values()) == ["FAILURE", "SUCCESS", "SUCCESS"]
    [(key, failure)] = [(k, r) for k, r in results.items() if r["status"] == "FAILURE"]
    assert failure["result"]["exc_type"] == "JobFailed"
    assert f"study {lost_key}: job chest failed: FileNotFoundError" in (
        failure["result"]["exc_message"][0])
    assert 0 < site.redis.ttl(key) <= 24 * 3600
    stages = metrics(port, "umsrep_stage_seconds_count", "stage")
    assert stages["load"] == 3.0  # every study loaded the bundle; one got to the end
    assert stages["inference"] == stages["writing"] == 1.0


@pytest.mark.slow
def test_a_killed_worker_child_gives_the_task_back_and_the_study_is_done_once(
        site: Site, worker: Any, tmp_path: Path, fault_table: Any) -> None:
    node, journal = site.node, site.journal
    proc = worker(node.config_path)
    wait_until(lambda: children(proc.pid), timeout=60)  # the pool's one child
    files = samples.write_study(tmp_path / "cr", "cr", 24, 4, rows=256, columns=256)
    assert storescu(node.port, files).returncode == 0
    key = wait_until(lambda: [j["study_key"] for j in journal.jobs()
                              if j["state"] == "processing"], timeout=120, interval=0.02)[0]
    with journal_locked(node.data_dir):  # the task cannot finish while the child is killed
        [child] = children(proc.pid)
        os.kill(child, signal.SIGKILL)
        wait_until(lambda: child not in children(proc.pid))
        assert journal.jobs(key)[0]["state"] == "processing"
    wait_until(lambda: settled(journal, 1), timeout=120)
    timeline = [s for s in states(journal, key) if s in ("processing", "done", "failed")]
    assert timeline == ["processing", "processing", "done"]  # started twice, done once
    log = (tmp_path / "worker.log").read_text()
    assert "WorkerLostError" in log and "signal 9" in log
    assert len(journal.outbox(key)) == 8  # SEG and SR of 4 images: one set
    wait_until(lambda: len(outputs(node.data_dir)) == 8)  # delivered by the node
    assert proc.poll() is None  # the worker itself lives on
    fault_table("SIGKILL of the Celery child running a study", "the task given back and "
                "run again; the study done once", processed_exactly_once="1 of 1",
                outputs_delivered="8 of 8")


@pytest.mark.slow
def test_a_study_that_kills_every_worker_child_is_failed_after_three(
        site: Site, worker: Any, tmp_path: Path) -> None:
    node, journal = site.node, site.journal
    proc = worker(node.config_path)
    files = samples.write_study(tmp_path / "cr", "cr", 25, rows=256, columns=256)
    assert storescu(node.port, files).returncode == 0
    key = wait_until(lambda: [j["study_key"] for j in journal.jobs()], timeout=60)[0]
    for tries in range(1, LOST_TRIES + 1):  # each try killed, as a crashing study would
        wait_until(lambda n=tries: states(journal, key).count("processing") == n,
                   timeout=120, interval=0.02)
        with journal_locked(node.data_dir):  # the try cannot end before its child dies
            [child] = wait_until(lambda: children(proc.pid), timeout=60)
            os.kill(child, signal.SIGKILL)
            wait_until(lambda c=child: c not in children(proc.pid))
    wait_until(lambda: settled(journal, 1), timeout=120)
    timeline = [s for s in states(journal, key) if s in ("processing", "done", "failed")]
    assert timeline == ["processing"] * LOST_TRIES + ["failed"]
    assert journal.jobs(key)[0]["error"].startswith(f"TriesLost: {LOST_TRIES} tries died")
    assert journal.outbox(key) == []
    assert site.redis.llen("cxr") == 0  # nothing left to hand to the next worker
    assert proc.poll() is None
