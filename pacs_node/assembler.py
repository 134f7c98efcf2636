"""Study completion: a quiet period without new instances, or sooner where content says so.

The quiet period is the first matching rule's (routing default otherwise), counted from the
study's last instance. A study that was receiving when the node stopped waits at least
`routing.restart_quiet_seconds` from the node's start, until an instance of it arrives again:
its sender resends what failed when it next tries, and the partial study must not be routed
and processed meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from pacs_node import router
from pacs_node.config import Routing
from pacs_node.journal import Journal
from pacs_node.logs import LoopFailures

log = logging.getLogger(__name__)


class Assembler:
    def __init__(self, journal: Journal, routing: Callable[[], Routing],
                 on_complete: Callable[[str], None]) -> None:
        self.journal = journal
        self.routing = routing
        self.on_complete = on_complete
        self.started_at = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def on_release(self, study_keys: set[str]) -> None:
        """An association ended normally: complete the studies whose content says so."""
        for key in sorted(study_keys):
            attrs = [i.attrs for i in self.journal.instances(key)]
            if router.completes_on_release(self.routing(), attrs):
                self.complete(key, "association released")

    def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        routing = self.routing()
        shortest = min([routing.quiet_seconds] + [
            r.quiet_seconds for r in routing.rules if r.quiet_seconds is not None])
        for study in self.journal.studies(("receiving",)):
            idle = now - max(study.last_instance_at, self.started_at)
            # Nothing received since the restart: a sender's resend may still come.
            floor = routing.restart_quiet_seconds if (
                study.last_instance_at < self.started_at) else 0.0
            if idle < max(shortest, floor):
                continue  # no rule could be due yet: skip reading its instances
            attrs = [i.attrs for i in self.journal.instances(study.study_key)]
            quiet = max(router.quiet_seconds(routing, attrs), floor)
            if idle >= quiet:
                self.complete(study.study_key, f"quiet for {quiet:g} s")

    def complete(self, key: str, why: str) -> bool:
        """Complete a receiving study now and route it; whether it was receiving."""
        if not self.journal.set_state(key, "complete", reason=why, expect=("receiving",)):
            return False
        log.info("study %s complete: %s", key, why)
        self.on_complete(key)
        return True

    def start(self, interval: float = 0.2) -> None:
        failures = LoopFailures(log, "study completion")

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.tick()
                except Exception as exc:  # keep completing other studies; the error is logged
                    failures.failed(exc)
                else:
                    failures.succeeded()

        self._thread = threading.Thread(target=loop, name="assembler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
