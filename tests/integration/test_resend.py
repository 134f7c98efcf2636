"""An instance received again: with the same bytes it is a duplicate (acknowledged, counted,
stored once, no new version); with other bytes it is kept beside the first and recorded as a
conflict. No version's row points at bytes it did not receive."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from prometheus_client import REGISTRY

from pacs_node import samples
from pacs_node.node import Node
from pacs_node.studies_cmd import study_report
from tests.conftest import storescu, wait_until
from tests.integration.conftest import dataset_bytes, settled
from tests.integration.test_dispatch import make_node

pytestmark = pytest.mark.integration


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    running = make_node(tmp_path, handler=lambda *_: None)  # every job done: no model needed
    running.start()
    yield running
    running.stop()


def counted(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_a_resend_is_stored_once_and_other_bytes_never_overwrite_the_first(
        node: Node, tmp_path: Path, fault_table: Any) -> None:
    cr = samples.cr_dataset(3, rows=64, columns=64)
    first = samples.write(cr, tmp_path / "first.dcm")
    assert storescu(node.port, [first]).returncode == 0
    [v1] = wait_until(lambda: settled(node, 1))
    assert v1.state == "done"
    before = {k: counted(f"umsrep_instances_{k}_total") for k in ("duplicate", "conflicting")}

    assert storescu(node.port, [first]).returncode == 0  # the same file again
    wait_until(lambda: [e for e in node.journal.events(v1.study_key)
                        if e["state"] == "duplicate"])
    assert [s.study_key for s in node.journal.studies()] == [v1.study_key]  # no new version

    sent = cr.SeriesDescription
    cr.SeriesDescription = "edited after it was sent"  # the same UIDs, other bytes
    assert storescu(node.port, [samples.write(cr, tmp_path / "edited.dcm")]).returncode == 0
    v1, v2 = sorted(wait_until(lambda: settled(node, 2)), key=lambda s: s.version)
    [kept], [edited] = node.journal.instances(v1.study_key), node.journal.instances(
        v2.study_key)
    assert Path(edited.path) == Path(kept.path).with_name(f"{cr.SOPInstanceUID}@2.dcm")
    assert pydicom.dcmread(kept.path).SeriesDescription == sent  # @1: the bytes it received
    assert pydicom.dcmread(edited.path).SeriesDescription == "edited after it was sent"
    reports = [study_report(node.journal, s, 1, phi=False) for s in (v1, v2)]
    assert [(r["duplicates"], r["conflicts"]) for r in reports] == [(1, 0), (0, 1)]
    assert {k: counted(f"umsrep_instances_{k}_total") - v for k, v in before.items()} == {
        "duplicate": 1, "conflicting": 1}
    assert dataset_bytes(Path(kept.path)) == dataset_bytes(first)  # @1 lost no byte
    fault_table("an instance sent again: the same bytes, then other bytes under its UIDs "
                "after the study completed", "a duplicate acknowledged and counted; the other "
                "bytes kept beside the first as a conflict (@2)", bytes_lost=0,
                versions=2)
