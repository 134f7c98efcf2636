"""Study completion after a quiet period, and after a restart a longer one: a study the node
was receiving when it stopped is not routed before its sender had time to resend."""

from __future__ import annotations

import time
from pathlib import Path

from pacs_node.assembler import Assembler
from pacs_node.config import Routing
from pacs_node.journal import Journal
from tests.unit.test_journal import add

ROUTING = Routing(quiet_seconds=10, restart_quiet_seconds=300)


def assembler(tmp_path: Path, started_at: float) -> tuple[Assembler, Journal, list[str]]:
    journal = Journal(tmp_path / "journal.db")
    completed: list[str] = []
    node = Assembler(journal, lambda: ROUTING, completed.append)
    node.started_at = started_at
    return node, journal, completed


def test_a_study_received_since_the_start_completes_after_the_quiet_period(
        tmp_path: Path) -> None:
    node, journal, completed = assembler(tmp_path, started_at=0.0)
    key = add(journal, "1.2.3.1.1")
    last = journal.study(key).last_instance_at  # type: ignore[union-attr]
    node.tick(now=last + 9)
    assert completed == []
    node.tick(now=last + 10)
    assert completed == [key]
    journal.close()


def test_a_study_left_receiving_by_a_restart_waits_for_the_resend(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    key = add(journal, "1.2.3.1.1")
    last = journal.study(key).last_instance_at  # type: ignore[union-attr]
    journal.close()
    node, journal, completed = assembler(tmp_path, started_at=last + 0.001)  # restarted
    node.tick(now=last + 299)  # a quiet period, and more, since the restart: not yet
    assert completed == []
    time.sleep(0.01)
    add(journal, "1.2.3.1.2")  # the sender's resend: the usual quiet period from now on
    resent = journal.study(key).last_instance_at  # type: ignore[union-attr]
    node.tick(now=resent + 10)
    assert completed == [key]
    assert journal.study(key).reason == "quiet for 10 s"  # type: ignore[union-attr]
    journal.close()


def test_a_study_no_one_resends_completes_after_the_restart_quiet_period(
        tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    key = add(journal, "1.2.3.1.1")
    last = journal.study(key).last_instance_at  # type: ignore[union-attr]
    journal.close()
    node, journal, completed = assembler(tmp_path, started_at=last + 60)
    node.tick(now=last + 60 + 300)
    assert completed == [key]
    assert journal.study(key).reason == "quiet for 300 s"  # type: ignore[union-attr]
    journal.close()
