"""The node: wires the DICOM edge, the journal, completion, routing, dispatch and delivery.

A routed study follows every rule that applies: `forward` queues its instances in the
outbox, `process` adds a job and dispatches it, `ignore` (or no rule) leaves it stored.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from pacs_node import console, rest, retention, router
from pacs_node.api import ApiServer, Route
from pacs_node.assembler import Assembler
from pacs_node.attrs import OWN_MANUFACTURER
from pacs_node.config import Config, Process, Routing
from pacs_node.dispatch import (
    CeleryDispatcher,
    Dispatcher,
    EmbeddedDispatcher,
    Handler,
    installed_handler,
)
from pacs_node.edge import BoundedServer
from pacs_node.journal import Journal, journal_path
from pacs_node.logs import LoopFailures
from pacs_node.metrics import serve_metrics
from pacs_node.outbox import Deliverer
from pacs_node.scp import Receiver, start_server
from pacs_node.spool import Spool
from umsrep_core.errors import DeliveryError

log = logging.getLogger(__name__)

DISPATCH_INTERVAL_S = 5.0


class Node:
    def __init__(self, config: Config, handler: Handler | None = None) -> None:
        self.config = config
        data_dir = config.node.data_dir
        self.journal = Journal(journal_path(data_dir))
        self.spool = Spool(data_dir / "spool")
        self.assembler = Assembler(self.journal, lambda: self.config.routing, self.route_study)
        self.receiver = Receiver(config, self.spool, self.journal, self.assembler.on_release)
        self.deliverer = Deliverer(self.journal, config, calling_ae=config.node.ae_titles[0])
        self.dispatcher: Dispatcher = (
            CeleryDispatcher(config.broker, config.api.url) if config.broker is not None
            else EmbeddedDispatcher(self.journal, lambda: self.config,
                                    handler or installed_handler(),
                                    after_job=self.deliverer.wake))
        self.server: BoundedServer | None = None
        self.api = (ApiServer(config.api, self.journal, data_dir, self._web)
                    if config.api.port is not None else None)
        self._stop = threading.Event()
        self._dispatch_now = threading.Event()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    def start(self) -> None:
        removed = self.spool.remove_partials()
        if removed:
            log.info("removed %d partial spool files left by a stop", removed)
        self.resume()
        node = self.config.node
        if node.metrics_port is not None:
            serve_metrics(self.journal, node.metrics_bind, node.metrics_port)
        self.server = start_server(self.config, self.receiver)
        if self.api is not None:
            self.api.start()
        self.assembler.start()
        self.deliverer.start()
        threading.Thread(target=self._dispatch_loop, name="dispatch", daemon=True).start()
        threading.Thread(target=self._retention_loop, name="retention", daemon=True).start()
        log.info("listening on %s:%d as %s; data in %s; %s", self.config.node.bind, self.port,
                 ", ".join(self.config.node.ae_titles), self.config.node.data_dir,
                 "broker " + _redact(self.config.broker.url) if self.config.broker
                 else "embedded workers (no broker)")

    def stop(self) -> None:
        self._stop.set()
        self._dispatch_now.set()
        if self.server is not None:
            self.server.shutdown()
        if self.api is not None:
            self.api.stop()
        self.assembler.stop()
        self.deliverer.stop()
        self.dispatcher.close()
        self.journal.close()

    def reload_routing(self, routing: Routing) -> None:
        self.config = self.config.model_copy(update={"routing": routing})
        log.info("routing reloaded: %d rules", len(routing.rules))

    # --- routing and dispatch ---------------------------------------------------------------

    def route_study(self, key: str) -> None:
        instances = self.journal.instances(key)
        if instances and all(i.attrs.manufacturer == OWN_MANUFACTURER for i in instances):
            self.journal.set_state(key, "ignored", reason="our own outputs, sent back")
            log.info("study %s: our own outputs, stored only", key)
            return
        rules = router.route(self.config.routing, [i.attrs for i in instances])
        if not rules:
            self.journal.set_state(key, "ignored", reason="no rule matched: stored only")
            log.info("study %s: no rule matched, stored only", key)
            return
        names = ",".join(r.name for r in rules)
        paths = [Path(i.path) for i in instances]
        for rule in rules:
            if rule.forward is not None:
                for destination in rule.forward.destinations:
                    self.journal.enqueue(key, destination, paths)
            if rule.process is not None:
                self.journal.add_job(key, rule.name, rule.process)
        self.deliverer.wake()
        if any(r.process is not None for r in rules):
            self.journal.set_state(key, "queued", route=names)
            log.info("study %s: queued by rule(s) %s", key, names)
            self._dispatch_now.set()  # by the dispatch thread: a broker may take its time
        elif any(r.forward is not None for r in rules):
            self.journal.set_state(key, "done", route=names, reason="forwarded (see outbox)")
            log.info("study %s: forwarded by rule(s) %s", key, names)
        else:
            self.journal.set_state(key, "ignored", route=names, reason=f"ignored by {names}")
            log.info("study %s: ignored by rule(s) %s", key, names)

    def dispatch_pending(self) -> None:
        """Dispatch the jobs not yet handed to a dispatcher, or sent so long ago that the
        broker may have lost them."""
        broker = self.config.broker
        stale_before = time.time() - broker.redispatch_after_s if broker else 0.0
        paused = self.journal.paused()
        for job in self.journal.jobs(state="queued"):  # not every job the journal has held
            sent = job["dispatched_at"]
            if (sent is not None and sent > stale_before) or job["route"] in paused:
                continue
            if sent is not None:
                log.warning("study %s: job %s not started %.0f s after it was sent: sending "
                            "it again", job["study_key"], job["route"], time.time() - sent)
            try:
                self.dispatcher.dispatch(job["study_key"], job["route"], job["queue"],
                                         Process.model_validate_json(job["process"])
                                         if job["process"] else None)
            except DeliveryError as exc:
                log.warning("study %s: dispatch of %s deferred: %s", job["study_key"],
                            job["route"], exc)
                return
            self.journal.job_dispatched(job["study_key"], job["route"])

    def requeue_silent(self) -> None:
        timeout = self.config.node.heartbeat_timeout_s
        for key, route in self.journal.requeue_silent(timeout):
            log.warning("study %s: no heartbeat from the worker of job %s for %.0f s: "
                        "dispatching it again", key, route, timeout)

    def resume(self) -> None:
        """Pick up studies left in an in-between state when the node last stopped (their jobs
        are dispatched once the dispatch thread starts)."""
        for study in self.journal.studies(("complete",)):
            log.info("study %s: resuming routing", study.study_key)
            self.route_study(study.study_key)
        requeued = self.journal.requeue_jobs()
        if requeued:
            log.info("re-dispatching %d job(s) interrupted by the last stop", requeued)

    def _dispatch_loop(self) -> None:
        """The one thread that hands jobs to the dispatcher: when a study is queued, and every
        DISPATCH_INTERVAL_S for what was deferred or lost. The association and completion
        threads only write the journal, so that a broker outage never holds up intake."""
        failures = LoopFailures(log, "dispatch")
        reported = time.time()
        while not self._stop.is_set():
            self._dispatch_now.clear()
            try:
                self.requeue_silent()
                self.dispatch_pending()
                if self.config.broker is not None:
                    reported = self._log_outcomes(reported)
            except Exception as exc:
                failures.failed(exc)
            else:
                failures.succeeded()
            self._dispatch_now.wait(DISPATCH_INTERVAL_S)

    # --- what an operator asks (REST API, console) -----------------------------------------

    def _web(self, token: str) -> tuple[list[Route], dict[str, Any]]:
        """The REST API's routes, and the console's where it has users."""
        api = self.config.api
        if api.users_file is None:
            return list(rest.routes(self, token)), {}
        return ([*rest.routes(self, token), *console.routes(self, api.users_file,
                                                             api.tls is not None)],
                console.settings(token, api.tls is not None))

    def act(self, key: str, action: str) -> bool:
        """reprocess (a study that ended), complete (a receiving one now, without waiting for
        its quiet period) or discard (one receiving or ended, its files with it, its history
        kept); whether the study was in a state the action applies to."""
        if action == "reprocess":
            return self.journal.reprocess(key)
        if action == "complete":
            return self.assembler.complete(key, "completed on request")
        paths = self.journal.discard(key, "discarded on request")
        if paths is None:
            return False
        for path in paths:
            path.unlink(missing_ok=True)
        log.info("study %s discarded on request: %d instances removed", key, len(paths))
        return True

    def set_paused(self, route: str, paused: bool) -> bool:
        """Hold a rule's queued jobs, or dispatch them again; False if no rule has the name."""
        if route not in {r.name for r in self.config.routing.rules}:
            return False
        if paused:
            self.journal.pause(route)
        else:
            self.journal.resume(route)
            self._dispatch_now.set()  # its queued jobs go now
        return True

    def retry_deliveries(self, destination: str | None) -> int:
        count = self.journal.retry_failed(destination)
        self.deliverer.wake()
        return count

    def _retention_loop(self) -> None:
        """Retention at start, then every RETENTION_INTERVAL_S (pacs_node.retention)."""
        failures = LoopFailures(log, "retention")
        while not self._stop.is_set():
            try:
                retention.apply(self.journal, self.config.retention, self.config.node.data_dir)
            except Exception as exc:
                failures.failed(exc)
            else:
                failures.succeeded()
            self._stop.wait(retention.RETENTION_INTERVAL_S)

    def _log_outcomes(self, since: float) -> float:
        """What the workers recorded (the embedded pool logs its own): a line per job that
        ended since `since`; the time to look from next."""
        for job in self.journal.jobs_finished(since):
            error = f": {job['error']}" if job["error"] else ""
            log.info("study %s: job %s %s%s", job["study_key"], job["route"], job["state"],
                     error)
            since = job["finished_at"]
        return since


def _redact(url: str) -> str:
    """A broker URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
