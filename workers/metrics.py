"""Prometheus metrics of a Celery worker: tasks by outcome, seconds per stage, by pipeline.

Served on http://UMSREP_WORKER_METRICS_BIND:UMSREP_WORKER_METRICS_PORT/metrics (bind
127.0.0.1 by default) when UMSREP_WORKER_METRICS_PORT is set; not served without it.
Names follow the node's (`pacs_node.metrics`): `umsrep_` prefix, `_total`, `_seconds`.

Design, for the prefork pool: tasks run in child processes, and one port must show the whole
worker. So prometheus-client's multiprocess mode: each child writes its values to files in
PROMETHEUS_MULTIPROC_DIR, and the worker's main process sums them when scraped (`serve`, on
`worker_init`, before the pool forks: see `workers.app`). That variable must be set when the
worker starts, not by the worker: prometheus_client reads it once, when first imported, and
the `celery` command imports it before any module of ours (through Flower's plugin). It names
a folder of this worker's own, whose counts are cleared at each start. A child that dies
leaves its file, so the totals keep its counts and only grow, as counters must.

The stage seconds come from the journal, where the pipeline notes each stage's duration:
the metrics can never disagree with the source of truth.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

from pacs_node.dispatch import JobJournal
from umsrep_core.errors import TransientError

log = logging.getLogger(__name__)

PORT_VARIABLE = "UMSREP_WORKER_METRICS_PORT"
FOLDER_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

OUTCOMES = ("done", "skipped", "failed", "retried")
# The stages workers.pipeline notes in the journal, in their order.
STAGES = ("load", "preprocess", "inference", "postprocess", "writing")

TASKS = Counter("umsrep_tasks_total", "Tries of umsrep.process_study by outcome",
                ["pipeline", "outcome"])
STAGE_SECONDS = Histogram("umsrep_stage_seconds", "Seconds of one stage of a study's job",
                          ["pipeline", "stage"],
                          buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))


def record(journal: JobJournal, study_key: str, pipeline: str, outcome: str,
           since: float) -> None:
    """Count one try of a job, and the stage durations the journal noted since it began."""
    assert outcome in OUTCOMES, outcome
    TASKS.labels(pipeline=pipeline, outcome=outcome).inc()
    try:
        stages = journal.stage_seconds(study_key, since=since)
    except (sqlite3.Error, TransientError) as exc:  # a failing journal or node API may be
        # why the try failed: the try is counted all the same
        log.warning("study %s: stage seconds not read from the journal: %s", study_key, exc)
        return
    for stage, seconds in stages.items():
        if stage in STAGES:
            STAGE_SECONDS.labels(pipeline=pipeline, stage=stage).observe(seconds)


def serve(**_: object) -> None:
    """Serve the sum of the worker's processes' metrics, if a port is set."""
    port = os.environ.get(PORT_VARIABLE)
    if not port:
        return
    folder = os.environ.get(FOLDER_VARIABLE)
    if not folder or not Path(folder).is_dir():
        # Celery would log and ignore any other exception of a signal handler: fail early.
        raise SystemExit(f"{PORT_VARIABLE} needs {FOLDER_VARIABLE}: a folder of this worker's "
                         f"own, for the counts of its processes (got {folder!r})")
    for stale in Path(folder).glob("*.db"):  # an earlier run's counts
        stale.unlink()
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    start_http_server(int(port), addr=os.environ.get("UMSREP_WORKER_METRICS_BIND", "127.0.0.1"),
                      registry=registry)
