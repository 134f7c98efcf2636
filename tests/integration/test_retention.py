"""Retention (pacs_node.retention): what the node removes, and what it never removes.

On a journal and real files: the received instances of a study that ended go `spool_days`
after it ended, unless something of it waits in the outbox; outputs every destination has go
`outputs_days` after they were sent; nothing else. Through a real node: it applies retention
when it starts, logs it, and WADO-RS and `umsrep reprocess` say the instances are gone.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pydicom
import pytest

from pacs_node.attrs import InstanceAttrs
from pacs_node.config import Retention
from pacs_node.journal import Journal, journal_path
from pacs_node.retention import DAY_S, apply
from tests.conftest import free_port, node_config, storescu, wait_until

pytestmark = pytest.mark.integration


def received(journal: Journal, folder: Path, study: str, state: str) -> tuple[str, Path]:
    """A study of one instance, its file in `folder`, left in `state`."""
    path = folder / f"{study}.dcm"
    path.write_bytes(b"\0" * 1000)
    key = journal.add_instance(study_uid=study, series_uid=f"{study}.1",
                               sop_instance_uid=f"{study}.1.1",
                               sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
                               transfer_syntax="1.2.840.10008.1.2.1", path=path, size=1000,
                               attrs=InstanceAttrs())
    journal.set_state(key, state)
    return key, path


def test_only_what_ended_and_was_delivered_goes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    spool, outputs = data / "spool", data / "outputs" / "1.2.9"
    spool.mkdir(parents=True)
    outputs.mkdir(parents=True)
    journal = Journal(journal_path(data))
    ended, ended_file = received(journal, spool, "1.2.1", "done")
    waiting, waiting_file = received(journal, spool, "1.2.2", "ignored")
    journal.enqueue(waiting, "pacs", [waiting_file])  # a forward not sent yet
    _, running_file = received(journal, spool, "1.2.3", "processing")
    busy, busy_file = received(journal, spool, "1.2.4", "done")
    delivered, pending = outputs / "SEG-1.dcm", outputs / "SR-1.dcm"
    for path in (delivered, pending):
        path.write_bytes(b"\0" * 500)
    journal.enqueue(ended, "pacs", [delivered])
    journal.enqueue(ended, "archive", [delivered])
    journal.enqueue(busy, "pacs", [pending])  # one of its outputs still to send
    for item in journal.outbox(ended):
        journal.sent(item["id"])

    soon = apply(journal, Retention(spool_days=30, outputs_days=7), data)
    assert (soon.studies, soon.outputs) == (0, 0)  # nothing is old enough yet
    later = time.time() + 31 * DAY_S
    removed = apply(journal, Retention(spool_days=30, outputs_days=7), data, now=later)
    assert (removed.studies, removed.instances, removed.outputs) == (1, 1, 1)
    assert removed.bytes == 1500
    assert not ended_file.exists() and not delivered.exists()
    assert waiting_file.exists()  # its forward still waits in the outbox
    assert running_file.exists()  # in between: never
    assert busy_file.exists() and pending.exists()  # its destination still waits for it
    study = journal.study(ended)
    assert study is not None and study.purged_at is not None and study.state == "done"
    assert journal.events(ended)[-1]["detail"] == (
        "retention: 1 received instances removed (0.0 MB), 30 days after it ended")
    assert not journal.reprocess(ended)  # nothing left to process
    assert apply(journal, Retention(spool_days=30), data, now=later).studies == 0  # once
    assert apply(journal, Retention(), data, now=later + 1e9) == apply(
        journal, Retention(), data)  # no settings: nothing goes, ever
    assert all(p.exists() for p in (waiting_file, running_file, busy_file, pending))
    journal.close()


def test_a_node_applies_retention_at_start_and_says_the_instances_are_gone(
        serve: Any, study_files: Any, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("a-token-of-the-test-0123456789")
    api = free_port()
    config = node_config(tmp_path / "data", 0, routing={"quiet_seconds": 0.5},
                         api={"port": api, "token_file": str(token)})
    node = serve(config)
    files = study_files("ct", count=2, rows=32, columns=32)  # stored only: it ends ignored
    assert storescu(node.port, files).returncode == 0
    [study] = wait_until(lambda: ended(node.data_dir))
    node.stop()
    time.sleep(1.0)
    config["retention"] = {"spool_days": 0.5 / DAY_S}  # half a second after it ended
    node = serve(config, data_dir=node.data_dir)
    wait_until(lambda: "retention: removed 2 received instances of 1 studies" in node.log())
    assert not any(Path(f).exists() for f in spool_paths(node.data_dir))
    uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    request = urllib.request.Request(f"http://127.0.0.1:{api}/dicomweb/studies/{uid}")
    request.add_header("Authorization", "Bearer a-token-of-the-test-0123456789")
    with pytest.raises(urllib.error.HTTPError) as gone:
        urllib.request.urlopen(request, timeout=10)
    assert gone.value.code == 410
    again = node.umsrep("reprocess", "--data-dir", str(node.data_dir), study)
    assert again.returncode == 1 and "removed by retention" in again.stderr


def ended(data_dir: Path) -> list[str]:
    journal = Journal(journal_path(data_dir))
    try:
        return [s.study_key for s in journal.studies(("ignored",))]
    finally:
        journal.close()


def spool_paths(data_dir: Path) -> list[str]:
    journal = Journal(journal_path(data_dir))
    try:
        return [i.path for i in journal.all_instances()]
    finally:
        journal.close()
