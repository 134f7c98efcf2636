"""The Celery app: `celery -A workers.app worker -Q cxr,echo_doppler`.

Configuration: the node's YAML file named by UMSREP_CONFIG (the packaged defaults without
it); UMSREP_BROKER_URL overrides its broker. JSON only; a task is acknowledged after it ran
(acks_late) and given back if its worker dies (reject_on_worker_lost: when a pool child dies,
the worker's main process puts the message back on its queue at once; the visibility timeout
below is for a whole worker gone, main process included); one task at a time per
process (prefetch 1), so that one process per GPU keeps one model warm, and each process
uses its share of the CPU cores (`share_cores`). Events are on for
Flower. One queue per pipeline, so a host can take only what it serves. The worker serves
Prometheus metrics on UMSREP_WORKER_METRICS_PORT, with PROMETHEUS_MULTIPROC_DIR, when set
(see workers.metrics).
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

from celery import Celery
from celery.signals import after_setup_logger, worker_init, worker_process_init
from kombu import Queue

from pacs_node.config import Config
from pacs_node.logs import scrub_record
from pacs_node.yamlconf import load_config
from umsrep_core.pipelines import names
from workers import metrics

log = logging.getLogger(__name__)

DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
# Redis re-delivers a task not acknowledged within this time: above the longest study.
VISIBILITY_TIMEOUT_S = 4 * 3600
# Task results (with a result backend: what Flower and `celery result` show) are kept a day:
# the journal is the record that lasts.
RESULT_EXPIRES_S = 24 * 3600


@functools.lru_cache(maxsize=1)
def settings() -> Config:
    path = os.environ.get("UMSREP_CONFIG")
    return load_config(Path(path) if path else None)


def broker_url() -> str:
    broker = settings().broker
    return os.environ.get("UMSREP_BROKER_URL") or (broker.url if broker else DEFAULT_BROKER)


def make_app() -> Celery:
    broker = settings().broker
    celery = Celery("umsrep", broker=broker_url(),
                    backend=broker.result_backend if broker else None,
                    include=["workers.tasks"])
    celery.conf.update(
        task_serializer="json", result_serializer="json", accept_content=["json"],
        task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
        worker_send_task_events=True, task_send_sent_event=True, task_track_started=True,
        task_queues=[Queue(name) for name in names()],
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        result_expires=RESULT_EXPIRES_S,
    )
    return celery


def share_cores(sender: object, **_: object) -> None:
    """Give each pool process its share of the cores this worker may use (its CPU affinity)
    as torch threads, unless OMP_NUM_THREADS says: torch's default (every core, in every
    process) oversubscribes the cores, and a busy OpenMP thread that spins waiting for a core
    slows inference tenfold (bench/throughput.py). Set in the main process (`worker_init`),
    inherited by the children it forks."""
    cores = len(os.sched_getaffinity(0))
    concurrency = getattr(sender, "concurrency", None)
    processes = concurrency if isinstance(concurrency, int) and concurrency > 0 else cores
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // processes)))


def scrub_logs(logger: logging.Logger, **_: object) -> None:
    """The handlers Celery gives the worker scrub what other libraries log and warn, and every
    traceback (a task's retry logs the error it chains), as the node's do (pacs_node.logs):
    highdicom warns with the patient's name."""
    logging.captureWarnings(True)
    for handler in logger.handlers:
        handler.addFilter(scrub_record)


def take_device(**_: object) -> None:
    """In each pool process: torch's threads (torch may have been imported before the variable
    was set), and the device, said in the log. A worker takes the first GPU it sees: one
    worker per GPU, pinned by CUDA_VISIBLE_DEVICES (deploy/systemd); with several visible,
    every pool process would share the first, and the log says so."""
    import torch  # noqa: PLC0415 - only worker processes, not Flower, load torch

    threads = int(os.environ["OMP_NUM_THREADS"])
    torch.set_num_threads(threads)
    device = "cpu"
    if torch.cuda.is_available():
        device = f"cuda:0 ({torch.cuda.get_device_name(0)})"
        if torch.cuda.device_count() > 1:
            log.warning("%d GPUs visible: this worker uses the first only; start one worker "
                        "per GPU with CUDA_VISIBLE_DEVICES", torch.cuda.device_count())
    log.info("worker process %d: torch on %s, %d threads", os.getpid(), device, threads)


app = make_app()
# In the worker's main process, before its pool forks (signals of the worker, not the app).
worker_init.connect(metrics.serve)
worker_init.connect(share_cores)
worker_process_init.connect(take_device)
after_setup_logger.connect(scrub_logs)
