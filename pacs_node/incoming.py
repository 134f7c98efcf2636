"""Datasets being received: the files pynetdicom writes each C-STORE's dataset into.

pynetdicom opens one with `NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")` when a
C-STORE's dataset starts, writes each fragment as it arrives, and closes and deletes it after
the C-STORE handler; `Incoming.open` makes them, in the spool's `.incoming` folder, so that:
- a fragment that would take the disk under the free-space mark, or that the disk cannot hold,
  is not written: the file is deleted at once and the rest of the dataset dropped, and the
  handler answers Out of Resources (`failure`) instead of pynetdicom aborting the association;
- a file whose association ends before its dataset is handled (an aborted transfer, a killed
  sender) is deleted when the connection closes (`discard`), not left until a restart.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class IncomingFile:
    """A write-only file that stops, deleted, when the disk runs short."""

    def __init__(self, incoming: Incoming) -> None:
        self.incoming = incoming
        fd, self.name = tempfile.mkstemp(suffix=".dcm", dir=incoming.folder)
        self._file = os.fdopen(fd, "wb")
        self.file = self  # pynetdicom flushes `.file`, as of a NamedTemporaryFile
        self.reader = threading.current_thread()  # the association's DUL thread
        self.claimed = False  # by the C-STORE handler: pynetdicom removes it afterwards
        self.failure: str | None = None
        self.written = 0

    def write(self, data: bytes) -> int:
        if self.failure is None:
            try:
                if self.incoming.free_bytes() - len(data) < self.incoming.floor_bytes:
                    raise OSError(errno.ENOSPC, "no room for the next fragment")
                self._file.write(data)
                self.written += len(data)
            except OSError as exc:
                self._fail(exc)
        return len(data)

    def flush(self) -> None:
        if self.failure is None:
            try:
                self._file.flush()
            except OSError as exc:
                self._fail(exc)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a failed write's buffer cannot be flushed
            self._file.close()
        self.incoming.forget(self)

    def _fail(self, exc: OSError) -> None:
        mark = self.incoming.floor_bytes // 1_000_000
        self.failure = (f"disk full: {exc.strerror or exc} after {self.written} bytes of the "
                        f"dataset ({self.incoming.free_bytes() // 1_000_000} MB free, "
                        f"{mark} MB kept free)")
        log.warning("receiving a dataset stopped, its partial file deleted: %s", self.failure)
        with contextlib.suppress(OSError):
            self._file.close()
        Path(self.name).unlink(missing_ok=True)  # closed: its space is free at once


class Incoming:
    def __init__(self, folder: Path, floor_mb: int) -> None:
        self.folder = folder
        self.floor_bytes = floor_mb * 1_000_000
        self._open: dict[str, IncomingFile] = {}
        self._lock = threading.Lock()

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.folder).free

    def open(self, **_: Any) -> IncomingFile:
        """pynetdicom's NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")."""
        handle = IncomingFile(self)
        with self._lock:
            self._open[handle.name] = handle
        return handle

    def forget(self, handle: IncomingFile) -> None:
        with self._lock:
            self._open.pop(handle.name, None)

    def claim(self, path: Path) -> str | None:
        """The C-STORE handler takes the dataset at `path`: why it is not whole (the disk),
        or None."""
        with self._lock:
            handle = self._open.get(str(path))
            if handle is None:
                return None
            handle.claimed = True
            return handle.failure

    def discard(self, reader: threading.Thread) -> int:
        """Delete the unclaimed files that `reader`'s association was writing; how many."""
        with self._lock:
            left = [h for h in self._open.values() if h.reader is reader and not h.claimed]
        for handle in left:
            handle.close()
            Path(handle.name).unlink(missing_ok=True)
        return len(left)
