"""The node's HTTP port: DICOMweb WADO-RS retrieval (PS3.18 10.4) of what it received, as
received, for anything that reads DICOMweb (and, next, for workers on other hosts).

    GET /dicomweb/studies/{study}[?version=N]                      the study's instances
    GET /dicomweb/studies/{study}/series/{series}/instances/{sop}  one of them

Both answer multipart/related; type="application/dicom", one part per instance, each the
file as the spool holds it. `version` is ours: a study received again after it completed is a
new version (README), and the latest is the default. Every request needs
`Authorization: Bearer <token>` (the token in `api.token_file`); TLS when `api.tls` is set;
loopback unless `api.bind` says otherwise. Served by tornado (Flower's server) in a thread of
its own, files streamed a part at a time.

Workers on other hosts use two more endpoints (`workers.remote_journal`), so that none touches
the node's SQLite or spool:

    POST /api/journal/{method}              a job's journal calls (JOB_CALLS), JSON in and out;
                                            409 to a try whose job was given to another
    POST /api/studies/{key}/outputs?destination=NAME
                                            a job's outputs, multipart/related like STOW-RS:
                                            kept in the node's outputs folder, queued to NAME
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.parser
import email.policy
import hmac
import json
import logging
import threading
import uuid
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import BaseModel
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, HTTPError, RequestHandler

from pacs_node.attrs import InstanceAttrs
from pacs_node.config import Api
from pacs_node.journal import Instance, Journal, study_key
from pacs_node.sender import server_tls_context
from pacs_node.spool import file_name, write_durably
from umsrep_core.errors import ClaimLost, ConfigError
from umsrep_core.phi import describe

log = logging.getLogger(__name__)

CHUNK = 1 << 20
MAX_OUTPUTS_BYTES = 2 << 30  # one job's outputs: a denoised multi-frame study at most


def read_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"api.token_file {path}: {exc.strerror or exc}") from exc
    if len(token) < 16:
        raise ConfigError(f"api.token_file {path}: a token of at least 16 characters is needed")
    return token


# The journal calls a job makes (pacs_node.dispatch.run_job, workers.pipeline, the worker's
# metrics), and the JSON their answers become.
JOB_CALLS = ("jobs", "lost_tries", "start_job", "heartbeat", "finish_job", "note",
             "note_stage", "job_process", "study", "instances", "stage_seconds")


class Authenticated(RequestHandler):
    def initialize(self, journal: Journal, token: str, data_dir: Path) -> None:
        self.journal, self.token, self.data_dir = journal, token, data_dir

    def prepare(self) -> None:
        given = self.request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, f"Bearer {self.token}".encode()):
            self.set_header("WWW-Authenticate", 'Bearer realm="umsrep"')
            raise HTTPError(401, "a bearer token is needed")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = exc.log_message if isinstance(exc, HTTPError) and exc.log_message else None
        self.finish({"error": message or self._reason})


class JobCall(Authenticated):
    """One journal call of a job, by name, its keyword arguments the JSON body."""

    def post(self, method: str) -> None:
        if method not in JOB_CALLS:
            raise HTTPError(404, f"no job call {method}")
        try:
            kwargs = json.loads(self.request.body or b"{}")
            result = getattr(self.journal, method)(**kwargs)
        except (TypeError, ValueError) as exc:
            raise HTTPError(400, f"{method}: {describe(exc)}") from exc
        except ClaimLost as exc:  # the try was silent and the job given to another
            raise HTTPError(409, str(exc)) from exc
        self.finish({"result": _plain(result)})


class Outputs(Authenticated):
    """A job's output objects, one application/dicom part each (its file name in
    Content-Location): kept under the node's outputs folder, queued to the destinations."""

    def post(self, key: str) -> None:
        study = self.journal.study(key)
        if study is None:
            raise HTTPError(404, f"no study {key}")
        message = multipart(self.request.headers.get("Content-Type", ""), self.request.body)
        if message.get_content_type() != "multipart/related":
            raise HTTPError(415, "multipart/related of application/dicom parts is expected")
        folder = self.data_dir / "outputs" / file_name(study.study_uid)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for part in message.iter_parts():
            name = Path(str(part.get("Content-Location", ""))).name
            body = part.get_payload(decode=True)
            if not name.endswith(".dcm") or not isinstance(body, bytes):
                raise HTTPError(400, "each part needs a Content-Location naming a .dcm file")
            path = folder / name
            write_durably(path, _writer(body))
            paths.append(path)
        for destination in self.get_arguments("destination"):
            self.journal.enqueue(key, destination, paths)
        self.finish({"stored": len(paths)})


class Retrieve(Authenticated):
    """WADO-RS: a study version's instances, or one of them."""

    async def get(self, study_uid: str, series_uid: str | None = None,
                  sop_uid: str | None = None) -> None:
        instances = [i for i in self._version(study_uid)
                     if series_uid is None or (i.series_uid, i.sop_instance_uid) == (
                         series_uid, sop_uid)]
        if not instances:
            raise HTTPError(404, "no such instance")
        boundary = uuid.uuid4().hex
        self.set_header("Content-Type", "multipart/related; type=\"application/dicom\"; "
                                        f"boundary={boundary}")
        for instance in instances:
            self.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
            with open(instance.path, "rb") as f:
                while chunk := f.read(CHUNK):
                    self.write(chunk)
                    await self.flush()
            self.write(b"\r\n")
        self.write(f"--{boundary}--\r\n".encode())

    def _version(self, study_uid: str) -> list[Instance]:
        asked = self.get_argument("version", None)
        if asked is None:
            study = self.journal.latest(study_uid)
        elif asked.isdigit():
            study = self.journal.study(study_key(study_uid, int(asked)))
        else:
            raise HTTPError(400, "version is a whole number")
        return [] if study is None else self.journal.instances(study.study_key)


def multipart(content_type: str, body: bytes) -> EmailMessage:
    """An HTTP body of that content type, read by the standard library's MIME parser: the
    parts of a multipart/related one are its `iter_parts()` (both ends of this API)."""
    return email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)


def _writer(data: bytes) -> Callable[[BinaryIO], object]:
    return lambda f: f.write(data)


def _plain(value: Any) -> Any:
    """A journal answer as JSON: dataclasses and models as objects, paths as text."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, InstanceAttrs):
        return value.to_json()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


class ApiServer:
    def __init__(self, api: Api, journal: Journal, data_dir: Path) -> None:
        assert api.port is not None and api.token_file is not None
        self.api, self.journal, self.data_dir = api, journal, data_dir
        self.token = read_token(api.token_file)
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: HTTPServer | None = None

    def start(self) -> None:
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            handlers = {"journal": self.journal, "token": self.token, "data_dir": self.data_dir}
            app = Application([
                (r"/dicomweb/studies/([^/]+)", Retrieve, handlers),
                (r"/dicomweb/studies/([^/]+)/series/([^/]+)/instances/([^/]+)", Retrieve,
                 handlers),
                (r"/api/journal/([a-z_]+)", JobCall, handlers),
                (r"/api/studies/([^/]+)/outputs", Outputs, handlers),
            ], max_body_size=MAX_OUTPUTS_BYTES)
            tls = server_tls_context(self.api.tls) if self.api.tls is not None else None
            self._server = HTTPServer(app, ssl_options=tls)
            sockets = bind_sockets(self.api.port or 0, address=self.api.bind)
            self._server.add_sockets(sockets)
            self.port = int(sockets[0].getsockname()[1])
            ready.set()
            self._loop.run_forever()

        threading.Thread(target=serve, name="api", daemon=True).start()
        if not ready.wait(10):
            raise RuntimeError("the HTTP API did not start")
        log.info("DICOMweb on http%s://%s:%d/dicomweb", "s" if self.api.tls else "",
                 self.api.bind, self.port)

    def stop(self) -> None:
        if self._loop is not None and self._server is not None:
            self._loop.call_soon_threadsafe(self._server.stop)
            self._loop.call_soon_threadsafe(self._loop.stop)
