"""Dispatch of routed studies: a Celery message on the machine's Redis, or the embedded pool."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from pacs_node import cli
from pacs_node.config import Config, Process
from pacs_node.journal import Journal
from pacs_node.node import Node
from tests.conftest import ECHOSCU, node_config, storescu, wait_until
from tests.integration import test_celery
from tests.integration.conftest import in_process_node

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/15"

own_redis = test_celery.own_redis  # a redis-server of the test's own, started when asked


def echo_ok(port: int) -> bool:
    return subprocess.run([ECHOSCU, "-aet", "ECHOSCU", "-aec", "UMSREP", "127.0.0.1", str(port)],
                          capture_output=True, timeout=30).returncode == 0


def make_node(tmp_path: Path, handler: Any = None, **sections: Any) -> Node:
    raw = node_config(tmp_path / "data", 0, routing={"quiet_seconds": 0.5}, **sections)
    return in_process_node(raw, handler)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Any]:
    nodes: list[Node] = []

    def start(**kw: Any) -> Node:
        node = make_node(tmp_path, **kw)
        node.start()
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()


def token_file(folder: Path) -> Path:
    path = folder / "api-token"
    path.write_text("a-token-of-the-test-0123456789")
    return path


def test_routed_study_becomes_a_celery_message_on_the_route_queue(
        running: Any, study_files: Any, tmp_path: Path) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    client.delete("cxr", "echo_doppler")
    node = running(broker={"url": REDIS_URL},
                   api={"port": 0, "token_file": str(token_file(tmp_path)),
                        "url": "https://pacs-node.example:8042"})
    files = study_files("cr")
    assert storescu(node.port, files).returncode == 0
    raw = wait_until(lambda: client.lrange("cxr", 0, -1), timeout=20)
    assert len(raw) == 1
    message = json.loads(raw[0])
    assert message["headers"]["task"] == "umsrep.process_study"
    assert message["content-type"] == "application/json"
    assert message["properties"]["delivery_info"]["routing_key"] == "cxr"
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    study = node.journal.studies()[0]
    assert args == [study.study_key, "chest-xray"]
    # what can change between routing and the run: the rule's settings as routed, and where
    # a worker on another host reaches the node
    assert kwargs == {"process": {"pipeline": "cxr", "bundle": None, "outputs": ["seg", "sr"],
                                  "destinations": ["results"]},
                      "node": "https://pacs-node.example:8042"}
    assert study.state == "queued"
    assert node.journal.jobs(study.study_key)[0]["dispatched_at"] is not None
    assert client.llen("echo_doppler") == 0
    client.delete("cxr")


@contextmanager
def silent_broker(url: str) -> Iterator[None]:
    """A listener on the broker's port that accepts connections and never answers: the worst
    outage, where each broker call lasts until its timeout."""
    port = int(url.rsplit(":", 1)[1].split("/", maxsplit=1)[0])
    with socket.create_server(("127.0.0.1", port)) as listener:
        held: list[socket.socket] = []

        def hold() -> None:
            with contextlib.suppress(OSError):  # until the listener closes
                while True:
                    held.append(listener.accept()[0])

        threading.Thread(target=hold, daemon=True).start()
        yield
    for sock in held:
        sock.close()


def test_a_job_queued_without_its_settings_is_sent_without_them(running: Any) -> None:
    """A job an older version queued kept no settings, and its rule may be gone since: its
    message carries none, and the worker takes the rule's current ones or fails the job with
    the reason (workers.pipeline.job_process). The node goes on dispatching."""
    from tests.unit.test_journal import add

    client = redis.Redis.from_url(REDIS_URL)
    client.delete("cxr")
    node = running(broker={"url": REDIS_URL})
    key = add(node.journal, "1.2.3.7.1", study="1.2.3.7")
    with node.journal._tx() as db:  # written as an older version did, in one step: the
        # dispatch thread must never see it with settings (it did, between two steps, in CI)
        db.execute("INSERT INTO jobs (study_key, route, queue, state) "
                   "VALUES (?, 'renamed-since', 'cxr', 'queued')", (key,))
    node._dispatch_now.set()  # the dispatch thread's next turn, now
    [raw] = wait_until(lambda: client.lrange("cxr", 0, -1), timeout=20)
    args, kwargs, _ = json.loads(base64.b64decode(json.loads(raw)["body"]))
    assert (args, kwargs) == ([key, "renamed-since"], {})
    assert node.journal.jobs(key)[0]["dispatched_at"] is not None
    client.delete("cxr")


def test_a_broker_outage_delays_dispatch_and_never_intake(
        running: Any, study_files: Any, own_redis: Any, fault_table: Any) -> None:
    node = running(broker={"url": own_redis.url})
    slowest = 0.0
    with silent_broker(own_redis.url):
        for seed in range(4):  # one study per association: each completes on release
            started = time.monotonic()
            assert storescu(node.port, study_files("cr", seed=seed)).returncode == 0
            assert echo_ok(node.port)
            slowest = max(slowest, time.monotonic() - started)
            assert slowest < 3  # answered at once, not after a broker call's 5 s timeout
        # No association's thread waits on the broker (pynetdicom names them AcceptorThread).
        assert wait_until(lambda: not [t for t in threading.enumerate()
                                       if t.name.startswith("AcceptorThread")], timeout=2)
        queued = wait_until(lambda: len([s for s in node.journal.studies()
                                         if s.state == "queued"]) == 4)
        assert queued and all(j["dispatched_at"] is None for j in node.journal.jobs())
    own_redis()  # the broker is back: every job goes out, once
    back = time.monotonic()
    assert wait_until(lambda: all(j["dispatched_at"] for j in node.journal.jobs()), timeout=60)
    dispatched = time.monotonic() - back
    assert redis.Redis.from_url(own_redis.url).llen("cxr") == 4
    fault_table("the broker accepts connections and never answers; 4 studies arrive", "intake "
                "and C-ECHO go on; the jobs wait in the journal and go out when it is back",
                slowest_store_and_echo=f"{slowest:.2f} s",
                all_dispatched_after_it_was_back=f"{dispatched:.1f} s", messages="4 of 4")


def test_embedded_pool_runs_the_handler_and_records_its_outcome(
        running: Any, study_files: Any) -> None:
    seen: list[tuple[str, str]] = []
    ran = threading.Event()

    def handler(journal: Journal, config: Config, study_key: str, route: str) -> None:
        seen.append((study_key, route))
        ran.set()
        if route == "echo-doppler":
            raise ValueError("no spectral envelope found")

    node = running(handler=handler)
    assert storescu(node.port, study_files("cr")).returncode == 0
    assert storescu(node.port, study_files("us_doppler", seed=1)).returncode == 0
    settled = wait_until(lambda: (s := node.journal.studies()) and len(s) == 2
                         and all(x.state in ("done", "failed") for x in s) and s)
    states = {s.route: s for s in settled}
    assert states["chest-xray"].state == "done"
    assert states["echo-doppler"].state == "failed"
    assert "ValueError: no spectral envelope found" in (states["echo-doppler"].reason or "")
    assert sorted(r for _, r in seen) == ["chest-xray", "echo-doppler"]
    job = node.journal.jobs(states["chest-xray"].study_key)[0]
    assert job["state"] == "done" and job["started_at"] <= job["finished_at"]
    timeline = [e["state"] for e in node.journal.events(states["chest-xray"].study_key)]
    assert timeline == ["receiving", "complete", "queued", "processing", "done"]


def test_no_installed_handler_fails_the_job_with_a_clear_reason(
        running: Any, study_files: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pacs_node.node.installed_handler", lambda: None)
    node = running()
    assert storescu(node.port, study_files("cr")).returncode == 0
    study = wait_until(lambda: [s for s in node.journal.studies() if s.state == "failed"])[0]
    assert "no handler installed for umsrep.process_study" in (study.reason or "")


def test_restart_redispatches_interrupted_jobs(tmp_path: Path, study_files: Any) -> None:
    node = make_node(tmp_path, broker={"url": "redis://127.0.0.1:1/0"})
    node.start()
    assert storescu(node.port, study_files("cr")).returncode == 0
    key = wait_until(lambda: [s.study_key for s in node.journal.studies()
                              if s.state == "queued"])[0]
    node.stop()
    done = threading.Event()
    restarted = make_node(tmp_path, handler=lambda j, c, k, r: done.set())
    restarted.start()
    try:
        assert done.wait(20)
        wait_until(lambda: restarted.journal.study(key).state == "done")  # type: ignore[union-attr]
    finally:
        restarted.stop()


def test_a_finished_job_is_not_run_again(tmp_path: Path) -> None:
    from pacs_node.dispatch import run_job
    from tests.unit.test_journal import add

    node = make_node(tmp_path)
    key = add(node.journal, "1.2.3.1.1")
    node.journal.add_job(key, "chest-xray", Process(pipeline="cxr"))
    runs: list[str] = []
    for _ in range(2):  # the same message delivered twice
        run_job(node.journal, node.config, key, "chest-xray", lambda j, c, k, r: runs.append(k))
    assert runs == [key]
    assert node.journal.study(key).state == "done"  # type: ignore[union-attr]
    node.journal.close()


def test_the_embedded_pool_tries_a_transient_error_again(tmp_path: Path) -> None:
    from pacs_node.dispatch import EmbeddedDispatcher
    from tests.unit.test_journal import add
    from umsrep_core.errors import TransientError

    node = make_node(tmp_path)
    key = add(node.journal, "1.2.3.1.2")
    node.journal.add_job(key, "chest-xray", Process(pipeline="cxr"))
    tries: list[int] = []

    def handler(journal: Journal, config: Config, study_key: str, route: str) -> None:
        tries.append(len(tries) + 1)
        if len(tries) < 3:
            raise TransientError("journal locked")

    pool = EmbeddedDispatcher(node.journal, lambda: node.config, handler, backoff_s=0.05)
    pool.dispatch(key, "chest-xray", "cxr", Process(pipeline="cxr"))
    wait_until(lambda: node.journal.study(key).state == "done")  # type: ignore[union-attr]
    pool.close()
    assert tries == [1, 2, 3]
    retries = [e["detail"] for e in node.journal.events(key) if e["state"] == "retry"]
    assert len(retries) == 2 and "try 1 of 5 failed" in retries[0]
    node.journal.close()


def test_a_failed_job_keeps_no_value_its_error_quoted(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """pydicom's message quotes the value it could not take: a birth date, a name. The
    reason the journal keeps and the log line say what failed, not what it was fed."""
    from pacs_node.dispatch import run_job
    from tests.unit.test_journal import add

    node = make_node(tmp_path)
    key = add(node.journal, "1.2.3.1.3")
    node.journal.add_job(key, "chest-xray", Process(pipeline="cxr"))

    def handler(journal: Journal, config: Config, study_key: str, route: str) -> None:
        raise ValueError("Unable to convert '1970-01-01' to 'DA' object")

    assert run_job(node.journal, node.config, key, "chest-xray", handler) == "failed"
    reason = "ValueError: Unable to convert '…' to 'DA' object"
    assert node.journal.study(key).reason == f"job chest-xray failed: {reason}"  # type: ignore[union-attr]
    assert reason in caplog.text and "1970" not in caplog.text
    assert not any("1970" in str(e.get("detail") or "") for e in node.journal.events(key))
    node.journal.close()


def test_a_failed_study_is_reprocessed_on_request(running: Any, study_files: Any,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`umsrep reprocess` against a running node: the study is routed and run again, by the
    rules and models the node has now (here: a handler that no longer fails)."""
    tries: list[str] = []

    def handler(journal: Journal, config: Config, study_key: str, route: str) -> None:
        tries.append(study_key)
        if len(tries) == 1:
            raise ValueError("the bundle was broken")

    node = running(handler=handler)
    assert storescu(node.port, study_files("cr")).returncode == 0
    [study] = wait_until(lambda: [s for s in node.journal.studies() if s.state == "failed"])
    data_dir = str(node.config.node.data_dir)
    assert cli.main(["reprocess", "--data-dir", data_dir, study.study_key]) == 0
    assert "receiving again" in capsys.readouterr().out
    assert wait_until(lambda: node.journal.study(study.study_key).state == "done")  # type: ignore[union-attr]
    assert tries == [study.study_key] * 2
    assert [s.study_key for s in node.journal.studies()] == [study.study_key]  # no new version
    assert cli.main(["reprocess", "--data-dir", data_dir, "1.2.3@1"]) == 1
    assert "no study 1.2.3@1" in capsys.readouterr().err
