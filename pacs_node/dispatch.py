"""Dispatch of routed studies: a Celery task message, or the same task in-process.

The task is `umsrep.process_study(study_key, route, process=..., node=...)`, JSON arguments,
on the route's pipeline queue: the message carries what can change between routing and the
run, the route's process settings as the study was routed with and, where the node's API has
a public URL (`api.url`), the URL that workers on other hosts reach it at. With no broker
configured, the node runs the registered handler for that task name in a bounded pool of its
own threads. Handlers are registered as entry points in the group `umsrep.handlers` (the
workers package provides `umsrep.process_study`).

Both paths end a job alike (`run_job`): an error that may pass (`is_transient`) is tried
again while tries are left, any other error fails the job at once with its reason. A job whose
tries keep dying with their process (a study that crashes or exhausts its worker) is failed
after LOST_TRIES of them, not handed from worker to worker for ever.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

from pacs_node.config import Broker, Config, Process
from pacs_node.journal import Instance, Journal, Study
from umsrep_core.errors import ClaimLost, DeliveryError, StudySkipped, TransientError, UmsrepError
from umsrep_core.phi import describe

log = logging.getLogger(__name__)

TASK_NAME = "umsrep.process_study"
HANDLER_GROUP = "umsrep.handlers"

BROKER_TIMEOUT_S = 5.0  # to connect to the broker, and for each of its answers

# Tries of one job that may die with their process (a worker killed, out of memory, the node
# stopped) before the job is failed instead of tried again.
LOST_TRIES = 3
# A running try tells the journal it is alive this often; the node gives a job whose try is
# silent for node.heartbeat_timeout_s to another try (Journal.requeue_silent).
HEARTBEAT_S = 5.0

class JobJournal(Protocol):
    """What a job reads and writes of the journal: the node's own (`Journal`: the embedded pool,
    and workers beside the node) or the node's over its API (`workers.remote_journal`)."""

    def jobs(self, key: str | None = None) -> list[dict[str, Any]]: ...
    def lost_tries(self, key: str, route: str) -> int: ...
    def start_job(self, key: str, route: str) -> str | None: ...
    def heartbeat(self, key: str, route: str, claim: str) -> bool: ...
    def finish_job(self, key: str, route: str, error: str | None = None,
                   skipped: str | None = None, claim: str | None = None) -> None: ...
    def note(self, key: str, step: str, detail: str | None = None) -> None: ...
    def note_stage(self, key: str, stage: str, seconds: float, more: str = "") -> None: ...
    def stage_seconds(self, key: str, since: float = 0.0) -> dict[str, float]: ...
    def job_process(self, key: str, route: str) -> Process | None: ...
    def study(self, key: str) -> Study | None: ...
    def instances(self, key: str) -> list[Instance]: ...
    def enqueue(self, key: str, destination: str, paths: list[Path]) -> int: ...
    def close(self) -> None: ...


# handler(journal, config, study_key, route): the journal of the job and the config of the
# process running it, the node's (embedded pool) or the worker's.
Handler = Callable[[JobJournal, Config, str, str], None]


# OS errors of a full, failing or busy disk or system, not of a wrong path or permission.
TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN, errno.EBUSY,
                              errno.ETIMEDOUT, errno.ESTALE, errno.EMFILE, errno.ENFILE})
# SQLite result codes (primary, the low byte) of a busy, locked, failing or full database.
TRANSIENT_SQLITE = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_IOERR,
                              sqlite3.SQLITE_FULL})
# The broker clients' connection errors, named: a node without a broker never imports them.
TRANSIENT_CLASSES = frozenset({"kombu.exceptions.OperationalError",
                               "redis.exceptions.ConnectionError",
                               "redis.exceptions.TimeoutError"})


def is_transient(exc: BaseException) -> bool:
    """Whether trying again later may succeed: a locked or failing journal, a full or failing
    disk, an unreachable broker, a timeout. Errors raised on purpose (UmsrepError: bad rules,
    undecodable pixels, nothing to process...) and unknown errors are permanent."""
    if isinstance(exc, UmsrepError):
        return isinstance(exc, TransientError)
    if isinstance(exc, sqlite3.Error):
        return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in TRANSIENT_SQLITE
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    if isinstance(exc, OSError):
        return exc.errno in TRANSIENT_ERRNOS
    return any(f"{c.__module__}.{c.__qualname__}" in TRANSIENT_CLASSES
               for c in type(exc).__mro__)


class TriesLost(UmsrepError):
    """A job's earlier tries died with their process, LOST_TRIES times."""


class Dispatcher(Protocol):
    def dispatch(self, study_key: str, route: str, queue: str,
                 process: Process | None) -> None: ...

    def close(self) -> None: ...


def installed_handler(name: str = TASK_NAME) -> Handler | None:
    for ep in entry_points(group=HANDLER_GROUP, name=name):
        handler: Handler = ep.load()
        return handler
    return None


def run_job(journal: JobJournal, config: Config, study_key: str, route: str,
            handler: Handler | None, *, attempt: int = 1, attempts: int = 1) -> str | None:
    """Run try `attempt` of `attempts` of one job and record it in the journal (both dispatch
    paths); returns the job's outcome (done, skipped, failed), None if it had already ended
    or is no longer queued (its study received more before it started).

    A job already finished is not run again: a message sent twice (see redispatch) or
    redelivered after a worker died costs nothing; one whose tries died unfinished
    LOST_TRIES times is failed (TriesLost). A transient error with tries left is noted in the
    journal and raised as TransientError for the caller to try again later; the job is not
    ended meanwhile. Any other error, or one on the last try, fails the job. While the
    handler runs, a thread sends heartbeats; a try that was silent too long finds its job
    given to another (ClaimLost) and ends nothing: what it did is dropped.
    """
    claim = None
    try:
        finished = [j for j in journal.jobs(study_key)
                    if j["route"] == route and j["state"] in ("done", "skipped", "failed")]
        if finished:
            log.info("study %s: job %s already %s", study_key, route, finished[0]["state"])
            return None
        lost = journal.lost_tries(study_key, route)
        if lost >= LOST_TRIES:
            raise TriesLost(f"{lost} tries died with their process before they ended (a "
                            "worker killed or out of memory, the node stopped): not tried "
                            "again")
        claim = journal.start_job(study_key, route)
        if claim is None:
            log.info("study %s: job %s is no longer queued (the study received more)",
                     study_key, route)
            return None
        log.info("study %s: job %s started (try %d of %d)", study_key, route, attempt, attempts)
        if handler is None:
            raise LookupError(f"no handler installed for {TASK_NAME} (entry point group "
                              f"{HANDLER_GROUP}): install the workers")
        skipped = None
        try:
            with Heartbeats(journal, study_key, route, claim):
                handler(journal, config, study_key, route)
        except StudySkipped as exc:
            skipped = str(exc)
        # in the try: it may be locked
        journal.finish_job(study_key, route, skipped=skipped, claim=claim)
    except ClaimLost:
        _given_away(study_key, route)
        return None
    except Exception as exc:  # the outcome is recorded, whatever it is
        reason = describe(exc)  # scrubbed: the journal and logs keep no patient data
        if is_transient(exc):
            if attempt < attempts:
                _note_retry(journal, study_key, route, f"try {attempt} of {attempts} failed, "
                                                       f"to be tried again: {reason}")
                raise TransientError(reason) from exc
            reason += f" (transient; gave up after try {attempt} of {attempts})"
        log.error("study %s: job %s failed: %s", study_key, route, reason)
        try:
            journal.finish_job(study_key, route, error=reason, claim=claim)
        except ClaimLost:
            _given_away(study_key, route)
            return None
        return "failed"
    outcome = "skipped" if skipped is not None else "done"
    log.info("study %s: job %s %s%s", study_key, route, outcome, f": {skipped}" if skipped else "")
    return outcome


def _given_away(study_key: str, route: str) -> None:
    log.warning("study %s: job %s was given to another try while this one was silent: this "
                "try's outcome is dropped", study_key, route)


class Heartbeats:
    """While a try runs, a thread tells the journal every HEARTBEAT_S that it is alive. A
    heartbeat that fails (the node out of reach a while) is logged, and the next one tried."""

    def __init__(self, journal: JobJournal, study_key: str, route: str, claim: str) -> None:
        self.journal, self.study_key, self.route, self.claim = journal, study_key, route, claim
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def __enter__(self) -> Heartbeats:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._done.wait(HEARTBEAT_S):
            try:
                if not self.journal.heartbeat(self.study_key, self.route, self.claim):
                    log.warning("study %s: job %s is no longer this try's", self.study_key,
                                self.route)
                    return
            except Exception as exc:  # a beat missed is no failure of the job
                log.warning("study %s: heartbeat of job %s not sent: %s", self.study_key,
                            self.route, describe(exc))


def _note_retry(journal: JobJournal, study_key: str, route: str, detail: str) -> None:
    log.warning("study %s: job %s %s", study_key, route, detail)
    try:
        journal.note(study_key, "retry", f"job {route} {detail}")
    except Exception as exc:  # the journal (or the way to it) may be what fails
        if not is_transient(exc):
            raise
        log.warning("study %s: retry not noted in the journal: %s", study_key, describe(exc))


class EmbeddedDispatcher:
    """The in-process pool: no broker, same task, bounded concurrency. A transient error is
    tried again after 2, 4, 8... s, up to `attempts` tries, as a Celery worker would; a node
    stopping meanwhile leaves the job unfinished, and its next start dispatches it again."""

    def __init__(self, journal: Journal, config: Callable[[], Config],
                 handler: Handler | None, *, after_job: Callable[[], None] = lambda: None,
                 attempts: int = 5, backoff_s: float = 2.0) -> None:
        self.journal = journal
        self.config = config  # read per job: the node's current config, rules reloaded
        self.handler = handler
        self.after_job = after_job  # the node wakes its outbox: results go out at once
        self.attempts, self.backoff_s = attempts, backoff_s
        self.stopping = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=config().node.embedded_workers,
                                       thread_name_prefix="job")

    def dispatch(self, study_key: str, route: str, queue: str,
                 process: Process | None) -> None:
        self.pool.submit(self._run, study_key, route)  # its process: the journal's

    def _run(self, study_key: str, route: str) -> None:
        for attempt in range(1, self.attempts + 1):
            try:
                run_job(self.journal, self.config(), study_key, route, self.handler,
                        attempt=attempt, attempts=self.attempts)
                self.after_job()
                return
            except TransientError:
                if self.stopping.wait(self.backoff_s * 2 ** (attempt - 1)):
                    return

    def close(self) -> None:
        self.stopping.set()
        self.pool.shutdown(wait=True, cancel_futures=False)


class CeleryDispatcher:
    """Sends the task message through the broker; only sends (the node runs no worker)."""

    def __init__(self, broker: Broker, node_url: str | None = None) -> None:
        from celery import Celery  # noqa: PLC0415 - only nodes with a broker pay its import

        self.node_url = node_url
        self.app = Celery("umsrep-node", broker=broker.url, backend=broker.result_backend)
        # A broker that accepts connections and never answers would hold the dispatch thread
        # for ever without socket timeouts (kombu's redis transport sets none by default).
        self.app.conf.update(task_serializer="json", accept_content=["json"],
                             broker_connection_retry_on_startup=False,
                             broker_connection_timeout=BROKER_TIMEOUT_S,
                             broker_transport_options={
                                 "socket_timeout": BROKER_TIMEOUT_S,
                                 "socket_connect_timeout": BROKER_TIMEOUT_S})

    def dispatch(self, study_key: str, route: str, queue: str,
                 process: Process | None) -> None:
        """`process`: the job's settings as routed; None for a job an older version queued
        without them (the worker then takes the rule's current ones: workers.pipeline)."""
        kwargs: dict[str, Any] = {}
        if process is not None:
            kwargs["process"] = process.model_dump(mode="json")
        if self.node_url is not None:
            kwargs["node"] = self.node_url
        try:
            self.app.send_task(TASK_NAME, args=[study_key, route], kwargs=kwargs, queue=queue,
                               retry=True, retry_policy={"max_retries": 2,
                                                         "interval_start": 0.2,
                                                         "interval_step": 0.5})
        except Exception as exc:  # kombu raises several kinds when the broker is down
            raise DeliveryError(f"broker unreachable: {exc}") from exc

    def close(self) -> None:
        self.app.close()
