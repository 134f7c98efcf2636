"""Dispatch of routed studies: a Celery task message, or the same task in-process.

The task is `umsrep.process_study(study_key, route)`, JSON arguments, on the route's
pipeline queue. With no broker configured, the node runs the registered handler for that
task name in a bounded pool of its own threads. Handlers are registered as entry points
in the group `umsrep.handlers` (the workers package provides `umsrep.process_study`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import entry_points
from typing import Protocol

from pacs_node.config import Broker, Config
from pacs_node.journal import Journal
from umsrep_core.errors import DeliveryError, StudySkipped

log = logging.getLogger(__name__)

TASK_NAME = "umsrep.process_study"
HANDLER_GROUP = "umsrep.handlers"

# handler(journal, config, study_key, route): the journal and config of the process running
# it, the node's (embedded pool) or the worker's.
Handler = Callable[[Journal, Config, str, str], None]


class Dispatcher(Protocol):
    def dispatch(self, study_key: str, route: str, queue: str) -> None: ...

    def close(self) -> None: ...


def installed_handler(name: str = TASK_NAME) -> Handler | None:
    for ep in entry_points(group=HANDLER_GROUP, name=name):
        handler: Handler = ep.load()
        return handler
    return None


def run_job(journal: Journal, config: Config, study_key: str, route: str,
            handler: Handler | None) -> None:
    """Run one job and record its start and outcome in the journal (both dispatch paths).

    A job already finished is not run again: a message sent twice (see redispatch) or
    redelivered after a worker died costs nothing.
    """
    finished = [j for j in journal.jobs(study_key)
                if j["route"] == route and j["state"] in ("done", "skipped", "failed")]
    if finished:
        log.info("study %s: job %s already %s", study_key, route, finished[0]["state"])
        return
    journal.start_job(study_key, route)
    log.info("study %s: job %s started", study_key, route)
    try:
        if handler is None:
            raise LookupError(f"no handler installed for {TASK_NAME} (entry point group "
                              f"{HANDLER_GROUP}): install the workers")
        handler(journal, config, study_key, route)
    except StudySkipped as exc:
        log.info("study %s: job %s skipped: %s", study_key, route, exc)
        journal.finish_job(study_key, route, skipped=str(exc))
    except Exception as exc:  # the outcome is recorded, whatever it is
        log.error("study %s: job %s failed: %s: %s", study_key, route, type(exc).__name__, exc)
        journal.finish_job(study_key, route, error=f"{type(exc).__name__}: {exc}")
    else:
        journal.finish_job(study_key, route)
        log.info("study %s: job %s done", study_key, route)


class EmbeddedDispatcher:
    """The in-process pool: no broker, same task, bounded concurrency."""

    def __init__(self, journal: Journal, config: Callable[[], Config],
                 handler: Handler | None) -> None:
        self.journal = journal
        self.config = config  # read per job: the node's current config, rules reloaded
        self.handler = handler
        self.pool = ThreadPoolExecutor(max_workers=config().node.embedded_workers,
                                       thread_name_prefix="job")

    def dispatch(self, study_key: str, route: str, queue: str) -> None:
        self.pool.submit(run_job, self.journal, self.config(), study_key, route, self.handler)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=False)


class CeleryDispatcher:
    """Sends the task message through the broker; only sends (the node runs no worker)."""

    def __init__(self, broker: Broker) -> None:
        from celery import Celery  # noqa: PLC0415 - only nodes with a broker pay its import

        self.app = Celery("umsrep-node", broker=broker.url, backend=broker.result_backend)
        self.app.conf.update(task_serializer="json", accept_content=["json"],
                             broker_connection_retry_on_startup=False)

    def dispatch(self, study_key: str, route: str, queue: str) -> None:
        try:
            self.app.send_task(TASK_NAME, args=[study_key, route], queue=queue,
                               retry=True, retry_policy={"max_retries": 2,
                                                         "interval_start": 0.2,
                                                         "interval_step": 0.5})
        except Exception as exc:  # kombu raises several kinds when the broker is down
            raise DeliveryError(f"broker unreachable: {exc}") from exc

    def close(self) -> None:
        self.app.close()
