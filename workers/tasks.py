"""The Celery task `umsrep.process_study`: thin, around the plain pipeline function.

The journal records its start and outcome exactly as in the node's embedded pool
(`pacs_node.dispatch.run_job`), so `umsrep studies` reads the same whichever ran it.
A transient error (`pacs_node.dispatch.is_transient`: journal locked, disk full, broker
away...) comes back as TransientError, which Celery retries with exponential backoff and full
jitter (a delay drawn from 0 to 5, 10, 20... s, at most 10 min) up to MAX_RETRIES times; the
last try records the failure. Permanent errors fail the job on their first try. A failed job
is a failed task (JobFailed, with the journal's reason): Celery and Flower show FAILURE, not a
SUCCESS whose result reads 'failed'.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from pacs_node.config import Process
from pacs_node.dispatch import TASK_NAME, JobJournal, run_job
from pacs_node.journal import Journal, journal_path
from umsrep_core.errors import TransientError, UmsrepError
from workers import metrics
from workers.app import app, settings
from workers.pipeline import process_study as pipeline
from workers.remote_journal import RemoteJournal

MAX_RETRIES = 8  # waits of up to 20 min in all (10 on average): time for an operator to act
RETRY_BACKOFF_S = 5
RETRY_BACKOFF_MAX_S = 600


class JobFailed(UmsrepError):
    """The job ended failed; its reason is in the journal, and here."""


# throws: an expected failure, logged as one line without a traceback (the journal has it).
@app.task(bind=True, name=TASK_NAME, autoretry_for=(TransientError,), max_retries=MAX_RETRIES,
          retry_backoff=RETRY_BACKOFF_S, retry_backoff_max=RETRY_BACKOFF_MAX_S,
          retry_jitter=True, throws=(JobFailed,))
def process_study(self: Any, study_key: str, route: str, process: dict[str, Any] | None = None,
                  node: str | None = None) -> str | None:
    """Returns the job's outcome (done, skipped; None if it had already ended); raises
    JobFailed when it failed. `process`: the route's settings as routed; `node`: the URL of
    the node's API, where it has a public one."""
    config = settings()
    # The node's journal over its API when the worker runs elsewhere (UMSREP_NODE_URL, or the
    # message's URL), else the node's data directory, shared.
    journal: JobJournal = (RemoteJournal.from_environment(config.node.data_dir, node)
                           or Journal(journal_path(config.node.data_dir)))
    handler = pipeline if process is None else functools.partial(
        pipeline, process=Process.model_validate(process))
    began = time.time()
    queue = str(self.request.delivery_info.get("routing_key", ""))  # the route's pipeline
    try:
        outcome = run_job(journal, config, study_key, route, handler,
                          attempt=self.request.retries + 1, attempts=self.max_retries + 1)
        if outcome is not None:
            metrics.record(journal, study_key, queue, outcome, since=began)
        if outcome == "failed":
            reason = next(j["error"] for j in journal.jobs(study_key) if j["route"] == route)
            raise JobFailed(f"study {study_key}: job {route} failed: {reason}")
        return outcome
    except TransientError:
        metrics.record(journal, study_key, queue, "retried", since=began)
        raise
    finally:
        journal.close()
