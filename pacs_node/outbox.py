"""Durable delivery of the journal's outbox: folders and DICOM peers, with retries.

Each run takes the due items, groups them by destination and delivers each group in one go
(one association per batch for a DICOM peer). Every item ends the run marked sent, or failed
with its next attempt scheduled by exponential backoff, or failed for good after
`retry.max_attempts` attempts or when its source file is gone. Delivery is at least once:
a crash between sending and marking resends the file, which a peer stores once by its UID.
"""

from __future__ import annotations

import logging
import random
import re
import shutil
import threading
import time
from pathlib import Path

from pacs_node.config import Config, Destination, Retry
from pacs_node.journal import Journal, OutboxItem
from pacs_node.logs import LoopFailures
from pacs_node.sender import SendAborted, send_files
from pacs_node.spool import write_durably
from umsrep_core.errors import UmsrepError
from umsrep_core.phi import describe

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.5
# Up to this fraction is taken off a batch's delays, so that destinations' retries spread out;
# one draw per batch, so that the items of a batch are retried together, in one association.
JITTER = 0.1

_UNSAFE = re.compile(r"[^0-9A-Za-z.@_-]")  # a study key becomes a folder name
_MAX_EXPONENT = 60  # 2**60 s is past any cap; a larger exponent would overflow a float


def backoff(retry: Retry, attempts: int, jitter: float = 0.0) -> float:
    """Seconds before the next attempt after `attempts` failed ones, less a `jitter` fraction."""
    delay = min(retry.max_delay_s, retry.first_delay_s * 2.0 ** min(attempts, _MAX_EXPONENT))
    return delay * (1 - jitter)


def _folder_name(name: str) -> str:
    """A path component that cannot leave its parent, whatever the key holds."""
    return _UNSAFE.sub("_", name).strip(".") or "_"


def copy_atomically(source: Path, target: Path) -> None:
    """Copy so that `target` is absent or whole, even after a crash."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(source, "rb") as src:
        write_durably(target, lambda dst: shutil.copyfileobj(src, dst, 1 << 20))


class Deliverer:
    def __init__(self, journal: Journal, config: Config, calling_ae: str) -> None:
        self.journal = journal
        self.config = config
        self.calling_ae = calling_ae
        self._run_lock = threading.Lock()  # the thread and a direct caller never overlap
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the thread ----------------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="outbox", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def wake(self) -> None:
        """Deliver now rather than at the next poll (called after an enqueue)."""
        self._wake.set()

    def _loop(self) -> None:
        failures = LoopFailures(log, "outbox run")
        while not self._stop.is_set():
            self._wake.clear()  # before the run: a wake during it triggers the next one
            try:
                self.run_once()
            except Exception as exc:
                failures.failed(exc)
            else:
                failures.succeeded()
            self._wake.wait(POLL_INTERVAL_S)

    # --- one run -----------------------------------------------------------------------------

    def run_once(self, now: float | None = None) -> int:
        """Deliver every due item; returns how many were sent."""
        with self._run_lock:
            now = time.time() if now is None else now
            groups: dict[str, list[OutboxItem]] = {}
            for item in self.journal.due(now):
                groups.setdefault(item.destination, []).append(item)
            sent = 0
            for name, items in groups.items():
                if self._stop.is_set():
                    break
                sent += self._deliver(name, items, now)
            return sent

    def _deliver(self, name: str, items: list[OutboxItem], now: float) -> int:
        present = []
        for item in items:
            if Path(item.path).is_file():
                present.append(item)
            else:  # nothing will bring it back: no retry
                self.journal.send_failed(item.id, f"source file missing: {item.path}", None)
        destination = self.config.destinations.get(name)
        if destination is None:
            error: str | None = f"unknown destination {name!r} (not in the configuration)"
            outcomes = {item.id: error for item in present}
        elif destination.folder is not None:
            outcomes, error = self._to_folder(name, present), None
        else:
            outcomes, error = self._to_peer(destination, present)
        sent = 0
        jitter = random.uniform(0, JITTER)
        for item in present:
            failure = outcomes[item.id]
            if failure is None:
                self.journal.sent(item.id)
                sent += 1
            else:
                self._failed(item, failure, now, jitter)
        error = error or next((o for o in outcomes.values() if o is not None), None)
        log.log(logging.INFO if sent == len(items) else logging.WARNING,
                "outbox %s (study %s): %d sent, %d failed, %d source files missing%s", name,
                ", ".join(sorted({i.study_key for i in items})), sent, len(present) - sent,
                len(items) - len(present), f"; first error: {error}" if error else "")
        return sent

    def _failed(self, item: OutboxItem, error: str, now: float, jitter: float) -> None:
        retry = self.config.retry
        give_up = item.attempts + 1 >= retry.max_attempts  # this attempt counts
        retry_at = None if give_up else now + backoff(retry, item.attempts, jitter)
        self.journal.send_failed(item.id, error, retry_at)

    def _to_folder(self, name: str, items: list[OutboxItem]) -> dict[int, str | None]:
        folder = self.config.folder(name)
        assert folder is not None
        study_dirs: dict[str, Path] = {}
        outcomes: dict[int, str | None] = {}
        for item in items:
            if item.study_key not in study_dirs:
                study = self.journal.study(item.study_key)
                study_dirs[item.study_key] = folder / _folder_name(
                    study.study_uid if study is not None else item.study_key)
            source = Path(item.path)
            try:
                copy_atomically(source, study_dirs[item.study_key] / source.name)
                outcomes[item.id] = None
            except OSError as exc:
                outcomes[item.id] = f"copy failed: {exc}"
        return outcomes

    def _to_peer(self, destination: Destination, items: list[OutboxItem]
                 ) -> tuple[dict[int, str | None], str | None]:
        """Send the items over one association; per-item outcomes and the batch's error."""
        assert destination.host is not None and destination.port is not None
        assert destination.ae_title is not None
        paths = [Path(item.path) for item in items]
        error = None
        try:
            results = send_files(destination.host, destination.port, paths,
                                 called_ae=destination.ae_title, calling_ae=self.calling_ae,
                                 tls=destination.tls)
        except SendAborted as exc:
            results, error = exc.results, str(exc)
        except UmsrepError as exc:  # a TLS file that cannot be loaded, say
            results, error = [], str(exc)
        except Exception as exc:  # unexpected: back off like any failure rather than spin
            log.exception("outbox: sending to %s failed unexpectedly", destination.host)
            results, error = [], f"unexpected error: {describe(exc)}"
        by_path = {r.path: r for r in results}
        outcomes: dict[int, str | None] = {}
        for item, path in zip(items, paths, strict=True):
            result = by_path.get(path)
            if result is None:  # not settled: the association failed before it
                outcomes[item.id] = error or "not sent"
            else:
                outcomes[item.id] = None if result.ok else result.error or "refused"
        return outcomes, error
