"""Which errors are worth another try (`is_transient`), with errors raised for real."""

from __future__ import annotations

import errno
import socket
import sqlite3
from collections.abc import Callable
from pathlib import Path

import kombu
import pytest
import redis
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless

from pacs_node import samples
from pacs_node.dispatch import is_transient
from umsrep_core.errors import (
    ConfigError,
    InferenceError,
    RoutingError,
    StudySkipped,
    TransientError,
)
from umsrep_core.imaging.pixels import read_frames


def raised(action: Callable[[], object]) -> Exception:
    with pytest.raises(Exception) as caught:  # any error: the test is which
        action()
    return caught.value


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once it is closed


def test_a_locked_or_full_database_is_transient_a_wrong_query_is_not(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    locked = raised(lambda: other.execute("BEGIN IMMEDIATE"))
    assert "database is locked" in str(locked) and is_transient(locked)
    assert not is_transient(raised(lambda: other.execute("SELECT * FROM missing")))
    holder.execute("ROLLBACK")


def test_a_full_or_failing_disk_is_transient_a_wrong_path_is_not(tmp_path: Path) -> None:
    assert is_transient(OSError(errno.ENOSPC, "No space left on device"))
    assert is_transient(OSError(errno.EIO, "Input/output error"))
    assert not is_transient(raised((tmp_path / "absent").read_bytes))
    assert not is_transient(PermissionError(errno.EACCES, "Permission denied"))


def test_an_unreachable_broker_or_a_timeout_is_transient() -> None:
    port = closed_port()
    assert is_transient(raised(lambda: socket.create_connection(("127.0.0.1", port), 1)))
    assert is_transient(raised(lambda: redis.Redis(port=port).ping()))
    with kombu.Connection(f"redis://127.0.0.1:{port}/0") as connection:
        assert is_transient(raised(lambda: connection.ensure_connection(max_retries=1)))
    assert is_transient(TimeoutError("timed out"))
    assert is_transient(TransientError("journal locked"))


def test_errors_raised_on_purpose_and_unknown_ones_are_permanent() -> None:
    for exc in (InferenceError("x"), RoutingError("x"), ConfigError("x"), StudySkipped("x"),
                ValueError("x"), KeyError("x"), RuntimeError("x")):
        assert not is_transient(exc), exc


def undecodable_cr(seed: int, frames: int = 1) -> Dataset:
    """A CR image whose RLE pixel data is garbage: received whole, never decodable."""
    ds = samples.cr_dataset(seed, rows=256, columns=256)
    ds.PixelData = encapsulate([bytes(64)] * frames)  # RLE headers of no segments
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.file_meta.TransferSyntaxUID = RLELossless
    return ds


def test_undecodable_pixels_are_permanent() -> None:
    ds = undecodable_cr(1)
    with pytest.raises(RuntimeError, match="Unable to decode") as decoding:
        _ = ds.pixel_array
    assert not is_transient(decoding.value)
    with pytest.raises(InferenceError, match="cannot decode pixel data") as reading:
        read_frames(ds)
    assert not is_transient(reading.value)
