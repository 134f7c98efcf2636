"""The node's REST API, for scripts and hospital integration: JSON under /api/v1 on the node's
HTTP port (pacs_node.api: the same token, TLS and bind), its OpenAPI 3.1 description at
/api/v1/openapi.json (no token needed to read it).

    GET  /api/v1/studies?state=&since=&route=&calling_ae=&modality=&limit=&offset=
    GET  /api/v1/studies/{key}                           the study, its events, instances...
    POST /api/v1/studies/{key}/reprocess|complete|discard
    POST /api/v1/deliveries/retry[?destination=NAME]     failed outbox items back in line
    GET  /api/v1/routes                                  the rules, paused or not
    POST /api/v1/routes/{name}/pause|resume              hold a route's queued jobs, or not
    GET  /api/v1/counts                                  studies, jobs and outbox by state

No answer carries patient data. An action that does not apply (a study in another state) is
409 with the reason; an unknown study or route 404.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any, Protocol

from tornado.web import HTTPError

from pacs_node.api import Authenticated
from pacs_node.config import Config
from pacs_node.journal import DISCARDABLE, ENDED, STATES, Journal, Study
from pacs_node.studies_cmd import study_report

PREFIX = "/api/v1"
MAX_PAGE = 500


class Operated(Protocol):
    """What the REST API asks of the node (pacs_node.node.Node)."""

    journal: Journal
    config: Config

    def act(self, key: str, action: str) -> bool: ...
    def set_paused(self, route: str, paused: bool) -> bool: ...
    def retry_deliveries(self, destination: str | None) -> int: ...


class Handler(Authenticated):
    def initialize(self, node: Operated, token: str) -> None:  # type: ignore[override]
        super().initialize(node.journal, token, node.config.node.data_dir)
        self.node = node

    def reply(self, value: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(value))

    def study_or_404(self, key: str) -> Study:
        study = self.journal.study(key)
        if study is None:
            raise HTTPError(404, f"no study {key}")
        return study

    def _number(self, name: str, default: int, most: int) -> int:
        value = self.get_argument(name, str(default))
        if not value.isdigit():
            raise HTTPError(400, f"{name} is a whole number")
        return min(int(value), most)


class Studies(Handler):
    def get(self) -> None:
        states = tuple(self.get_arguments("state"))
        if set(states) - set(STATES):
            raise HTTPError(400, f"state is one of {', '.join(STATES)}")
        since = self.get_argument("since", None)
        try:
            after = None if since is None else float(since)
        except ValueError as exc:
            raise HTTPError(400, "since is a time in seconds since 1970") from exc
        limit, offset = self._number("limit", 50, MAX_PAGE), self._number("offset", 0, 1 << 31)
        found, total = self.journal.find(
            states=states, since=after, route=self.get_argument("route", None),
            calling_ae=self.get_argument("calling_ae", None),
            modality=self.get_argument("modality", None), limit=limit, offset=offset)
        counts = self.journal.counts([s.study_key for s in found])
        self.reply({"total": total, "limit": limit, "offset": offset, "studies": [
            study_report(self.journal, s, counts.get(s.study_key, 0), phi=False)
            for s in found]})


class OneStudy(Handler):
    def get(self, key: str) -> None:
        study = self.study_or_404(key)
        instances = self.journal.instances(key)
        report = study_report(self.journal, study, len(instances), phi=False)
        report["events"] = self.journal.events(key)
        report["instances"] = [{"sop_instance_uid": i.sop_instance_uid,
                                "series_uid": i.series_uid, "sop_class_uid": i.sop_class_uid,
                                "transfer_syntax": i.transfer_syntax, "size": i.size,
                                "received_at": i.received_at, "modality": i.attrs.modality}
                               for i in instances]
        report["deliveries"] = [{k: item[k] for k in ("destination", "path", "state",
                                                       "attempts", "last_error", "sent_at")}
                                for item in self.journal.outbox(key)]
        self.reply(report)


class StudyAction(Handler):
    def post(self, key: str, action: str) -> None:
        study = self.study_or_404(key)
        if not self.node.act(key, action):
            needs = {"reprocess": f"ended ({', '.join(ENDED)}) with its instances kept",
                     "complete": "receiving", "discard": ", ".join(DISCARDABLE)}[action]
            raise HTTPError(409, f"{action}: study {key} is {study.state}"
                                 f"{', its instances removed' if study.purged_at else ''}; "
                                 f"it must be {needs}")
        self.reply({"study_key": key, "state": self.study_or_404(key).state})


class RetryDeliveries(Handler):
    def post(self) -> None:
        self.reply({"requeued": self.node.retry_deliveries(
            self.get_argument("destination", None))})


class Routes(Handler):
    def get(self) -> None:
        paused = self.journal.paused()
        self.reply({"routes": [
            {"name": rule.name, "action": "process" if rule.process else
             "forward" if rule.forward else "ignore",
             "pipeline": rule.process.pipeline if rule.process else None,
             "destinations": rule.destinations, "paused_since": paused.get(rule.name)}
            for rule in self.node.config.routing.rules]})


class RouteAction(Handler):
    def post(self, name: str, action: str) -> None:
        if not self.node.set_paused(name, action == "pause"):
            raise HTTPError(404, f"no rule {name}")
        self.reply({"name": name, "paused": action == "pause"})


class Counts(Handler):
    def get(self) -> None:
        self.reply({"at": time.time(), "studies": self.journal.state_counts(),
                    "jobs": self.journal.job_counts(),
                    "outbox": self.journal.outbox_counts(),
                    "paused_routes": sorted(self.journal.paused())})


class OpenApi(Handler):
    def prepare(self) -> None:
        """Readable without the token: it describes, it holds no data."""

    def get(self) -> None:
        self.reply(openapi())


# (method, path, summary, query parameters, statuses) of each operation, for the OpenAPI
# document; `routes()` serves exactly these paths (tests/integration/test_rest.py checks).
OPERATIONS: list[tuple[str, str, str, tuple[str, ...], tuple[int, ...]]] = [
    ("get", "/studies", "Studies, newest first, filtered and paged",
     ("state", "since", "route", "calling_ae", "modality", "limit", "offset"), (200, 400)),
    ("get", "/studies/{key}", "A study: state, timings, jobs, findings, events, instances, "
     "deliveries", (), (200, 404)),
    ("post", "/studies/{key}/reprocess", "Route and process again a study that ended", (),
     (200, 404, 409)),
    ("post", "/studies/{key}/complete", "Complete a receiving study now", (), (200, 404, 409)),
    ("post", "/studies/{key}/discard", "Drop a receiving or ended study and its files", (),
     (200, 404, 409)),
    ("post", "/deliveries/retry", "Put failed outbox items back in line", ("destination",),
     (200,)),
    ("get", "/routes", "The routing rules, paused or not", (), (200,)),
    ("post", "/routes/{name}/pause", "Hold the route's queued jobs", (), (200, 404)),
    ("post", "/routes/{name}/resume", "Dispatch the route's queued jobs again", (), (200, 404)),
    ("get", "/counts", "Studies, jobs and outbox items by state", (), (200,)),
    ("get", "/openapi.json", "This description", (), (200,)),
]
QUERY_SCHEMAS: dict[str, Any] = {
    "state": {"type": "array", "items": {"enum": list(STATES)}},
    "since": {"type": "number", "description": "seconds since 1970: created at or after"},
    "limit": {"type": "integer", "maximum": MAX_PAGE, "default": 50},
    "offset": {"type": "integer", "default": 0}}
_STATUS = {200: "OK", 400: "A parameter is malformed", 404: "No such study or route",
           409: "The action does not apply to the study in its state"}


def openapi() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for method, path, summary, query, statuses in OPERATIONS:
        parameters: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in ("key", "name") if f"{{{name}}}" in path]
        parameters += [{"name": name, "in": "query", "required": False,
                        "schema": QUERY_SCHEMAS.get(name, {"type": "string"})}
                       for name in query]
        paths.setdefault(PREFIX + path, {})[method] = {
            "summary": summary, "parameters": parameters,
            "security": [] if path == "/openapi.json" else [{"bearer": []}],
            "responses": {str(s): {"description": _STATUS[s],
                                   "content": {"application/json": {}}} for s in statuses}}
    return {"openapi": "3.1.0",
            "info": {"title": "umsrep node", "version": "1",
                     "description": "Studies, jobs and deliveries of a umsrep node. NOT FOR "
                                    "CLINICAL USE: research models."},
            "components": {"securitySchemes": {"bearer": {"type": "http",
                                                          "scheme": "bearer"}}},
            "paths": paths}


def routes(node: Operated, token: str) -> Sequence[tuple[str, type[Handler], dict[str, Any]]]:
    """The REST API's tornado routes, for the node's HTTP server."""
    kwargs = {"node": node, "token": token}
    table: list[tuple[str, type[Handler]]] = [
        (r"/studies", Studies), (r"/studies/([^/]+)", OneStudy),
        (r"/studies/([^/]+)/(reprocess|complete|discard)", StudyAction),
        (r"/deliveries/retry", RetryDeliveries), (r"/routes", Routes),
        (r"/routes/([^/]+)/(pause|resume)", RouteAction), (r"/counts", Counts),
        (r"/openapi\.json", OpenApi)]
    return [(PREFIX + pattern, handler, kwargs) for pattern, handler in table]

