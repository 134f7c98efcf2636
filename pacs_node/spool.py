"""The spool: each instance's bytes exactly as received, written durably.

A received dataset is written to a temporary file under `.incoming/` as it arrives, then
fsynced and linked to its final name (same file system), and the directory fsynced: a file
under its final name is always whole, and never replaced: an instance received again with
other bytes is kept beside the first (`versions`). Names derive from UIDs through
`file_name`: a valid UID is its own name, anything else a hash of it, so no UID, however odd,
is ever a path.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from pydicom.dataset import Dataset

from umsrep_core.errors import IngestError

# DICOM UID grammar (PS3.5 9.1): components of digits without a leading zero, at most 64 chars.
VALID_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
MAX_UID = 64  # the UI value's maximum length (PS3.5 6.2)
TEMP_SUFFIX = ".partial"


def check_uid(value: object, name: str) -> str:
    """The UID as received, padding stripped. Non-conformant UIDs (hex strings from
    anonymisers, leading zeros) are accepted as a PACS accepts them; refused are only a
    missing or empty one, and one that no UI value can hold or that would reach a log line
    as control characters."""
    uid = str(value or "").strip().rstrip("\0")
    if not uid:
        raise IngestError(f"{name} is missing")
    if len(uid) > MAX_UID:
        raise IngestError(f"{name} is longer than {MAX_UID} characters")
    if not (uid.isascii() and uid.isprintable()):
        raise IngestError(f"{name} {uid!r} holds characters other than printable ASCII")
    return uid


def is_valid_uid(uid: str) -> bool:
    return len(uid) <= MAX_UID and VALID_UID.match(uid) is not None


def file_name(uid: str) -> str:
    """A path component for `uid`: the UID itself when it is valid (digits and dots cannot
    leave a folder), else `x` and a hash of it, which no valid UID can look like."""
    if is_valid_uid(uid):
        return uid
    return "x" + hashlib.sha256(uid.encode()).hexdigest()[:40]


_CODE_STRING = re.compile(r"[A-Z0-9_ ]{1,16}")


def output_name(ds: Dataset) -> str:
    """The file name of an object we write (workers.pipeline) or a worker returns (STOW-RS);
    ValueError for a Modality that is no code string (it could name another folder)."""
    modality = str(ds.get("Modality", ""))
    if not _CODE_STRING.fullmatch(modality):
        raise ValueError(f"Modality {modality!r} is not a code string")
    return f"{modality}-{file_name(str(ds.SOPInstanceUID))}.dcm"


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.incoming = root / ".incoming"  # datasets being received, not yet checked
        self.incoming.mkdir(parents=True, exist_ok=True)

    def path(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        study, series, instance = map(file_name, (study_uid, series_uid, sop_instance_uid))
        return self.root / study / series / f"{instance}.dcm"

    def adopt(self, received: Path, path: Path) -> int | None:
        """Move a received file (same file system) to `path` durably, unless a file is there
        already: its size, or None with the received file left where it is."""
        self._make_dirs(path.parent)
        fd = os.open(received, os.O_RDONLY)
        try:
            os.fsync(fd)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        try:
            os.link(received, path)  # unlike a rename, never over an existing file
        except FileExistsError:
            return None
        os.unlink(received)
        _fsync_dir(path.parent)
        return size

    def _make_dirs(self, directory: Path) -> None:
        """Create the study and series folders, their new entries synced like the file's."""
        if directory.is_dir():
            return
        self._make_dirs(directory.parent)
        directory.mkdir(exist_ok=True)
        _fsync_dir(directory.parent)

    def free_mb(self) -> float:
        return shutil.disk_usage(self.root).free / 1e6

    def remove_partials(self) -> int:
        """Delete what a crash left half-written; its sender never got Success."""
        leftovers = [*self.incoming.iterdir(), *self.root.rglob(f"*{TEMP_SUFFIX}")]
        for path in leftovers:
            path.unlink(missing_ok=True)
        return len(leftovers)


def versions(path: Path) -> Iterator[Path]:
    """`path`, then `<name>@2.dcm`, `<name>@3.dcm`...: where other bytes received under the
    same SOP Instance UID are kept, beside the first."""
    yield path
    for n in itertools.count(2):
        yield path.with_name(f"{path.stem}@{n}{path.suffix}")


def write_durably(path: Path, fill: Callable[[BinaryIO], object]) -> None:
    """Temporary file beside `path`, filled, fsynced, renamed over `path`, directory synced."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident():x}{TEMP_SUFFIX}")
    try:
        with open(temp, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)  # the rename itself is durable once the directory is synced


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
