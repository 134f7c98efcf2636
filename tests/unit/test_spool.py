"""UID checks and durable writes of the spool."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacs_node.spool import (
    Spool,
    check_uid,
    file_name,
    is_valid_uid,
    versions,
    write_durably,
)
from umsrep_core.errors import IngestError


@pytest.mark.parametrize("bad", ["", " \0", "1." + "2" * 64, "1.2\n3", "1.2.\x1b[31m", "1.2.é"])
def test_missing_overlong_and_unprintable_uids_are_refused(bad: str) -> None:
    with pytest.raises(IngestError):
        check_uid(bad, "SOPInstanceUID")


HEX = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


@pytest.mark.parametrize("odd", [HEX, "999.999.01.23.45.6789", "1.2.3/../../x", "../etc", ".."])
def test_non_conformant_uids_are_kept_but_never_a_path(odd: str) -> None:
    assert check_uid(odd, "SOPInstanceUID") == odd
    assert not is_valid_uid(odd)
    name = file_name(odd)
    assert name.startswith("x") and len(name) == 41 and name.isalnum()
    assert file_name(odd + "0") != name


@pytest.mark.parametrize("uid", ["0", "1.2.840.10008.5.1.4.1.1.6", "2.25." + "1" * 59])
def test_a_valid_uid_is_its_own_file_name(uid: str) -> None:
    assert is_valid_uid(uid) and file_name(uid) == uid


def test_uid_padding_is_stripped() -> None:
    assert check_uid("1.2.840.10008\0", "x") == "1.2.840.10008"


def test_spool_paths_stay_under_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    path = spool.path("../../etc", "1.2.3", HEX)
    assert path.resolve().is_relative_to(spool.root.resolve())
    assert path.parent.parent.name == file_name("../../etc")
    assert path.name == f"{file_name(HEX)}.dcm"


def test_adopt_moves_a_received_file_into_place(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    received = spool.incoming / "tmp1.dcm"
    received.write_bytes(b"DICM" * 1000)
    path = spool.path("1.2", "1.2.3", "1.2.3.4")
    assert spool.adopt(received, path) == 4000
    assert path.read_bytes() == b"DICM" * 1000
    assert not received.exists() and [p.name for p in path.parent.iterdir()] == ["1.2.3.4.dcm"]


def test_adopt_never_replaces_a_stored_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    path = spool.path("1.2", "1.2.3", "1.2.3.4")
    for n, content in enumerate((b"first", b"second")):
        received = spool.incoming / f"tmp{n}.dcm"
        received.write_bytes(content)
        placed = next(p for p in versions(path) if spool.adopt(received, p) is not None)
        assert placed.read_bytes() == content and not received.exists()
    assert path.read_bytes() == b"first"
    assert sorted(p.name for p in path.parent.iterdir()) == ["1.2.3.4.dcm", "1.2.3.4@2.dcm"]
    received = spool.incoming / "tmp2.dcm"
    received.write_bytes(b"third")
    assert spool.adopt(received, path) is None and received.exists()  # left for the caller


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
