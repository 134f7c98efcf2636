"""UID checks and durable writes of the spool."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacs_node.spool import Spool, check_uid, write_durably
from umsrep_core.errors import IngestError


@pytest.mark.parametrize("bad", ["", "1.2.3/../../x", "../etc", "1..2", "1.2.", "a.b",
                                 "1." + "2" * 64, "1.2 3"])
def test_bad_uids_are_refused(bad: str) -> None:
    with pytest.raises(IngestError):
        check_uid(bad, "SOPInstanceUID")


def test_uid_padding_is_stripped() -> None:
    assert check_uid("1.2.840.10008\0", "x") == "1.2.840.10008"


def test_adopt_moves_a_received_file_into_place(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    received = spool.incoming / "tmp1.dcm"
    received.write_bytes(b"DICM" * 1000)
    path = spool.path("1.2", "1.2.3", "1.2.3.4")
    assert spool.adopt(received, path) == 4000
    assert path.read_bytes() == b"DICM" * 1000
    assert not received.exists() and [p.name for p in path.parent.iterdir()] == ["1.2.3.4.dcm"]


def test_partials_from_a_crash_are_removed(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    (tmp_path / "spool" / "1.2").mkdir()
    (tmp_path / "spool" / "1.2" / ".x.dcm.1.ff.partial").write_bytes(b"half")
    (tmp_path / "spool" / ".incoming" / "tmpab12.dcm").write_bytes(b"arriving")
    assert spool.remove_partials() == 2
    assert not list(spool.incoming.iterdir())
    assert not list((tmp_path / "spool").rglob("*.partial"))


def test_failed_durable_write_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "out.dcm"
    with pytest.raises(TypeError):
        write_durably(path, lambda f: f.write("not bytes"))
    assert list(tmp_path.iterdir()) == []
