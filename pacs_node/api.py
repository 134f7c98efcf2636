"""The node's HTTP port: DICOMweb (PS3.18) for what it received and what workers make of
it, and the job API of workers on other hosts (`workers.remote_journal`), so that none touches
the node's SQLite or spool.

    GET  /dicomweb/studies/{study}[?version=N]                      WADO-RS: its instances
    GET  /dicomweb/studies/{study}/series/{series}/instances/{sop}  one of them
    POST /dicomweb/studies/{study}[?version=N&destination=NAME...]  STOW-RS: a job's outputs,
                                                     kept in the node's outputs folder, queued
                                                     to each destination named
    POST /api/journal/{method}   a job's journal calls (JOB_CALLS), JSON in and out; 409 to a
                                 try whose job was given to another

WADO-RS answers multipart/related; type="application/dicom", one part per instance, each the
file as the spool holds it. STOW-RS takes the same form and answers the standard's JSON
(application/dicom+json: ReferencedSOPSequence, FailedSOPSequence with a FailureReason):
200 all stored, 202 some, 409 none. `version` is ours: a study received again after it
completed is a new version (README), and the latest is the default. Every request needs
`Authorization: Bearer <token>` (the token in `api.token_file`); TLS when `api.tls` is set;
loopback unless `api.bind` says otherwise. Served by tornado (Flower's server) in a thread of
its own, files streamed a part at a time; job calls and STOW-RS (journal writes, fsync) run in
the loop's executor threads, so that one worker's slow request holds up no other's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.parser
import email.policy
import functools
import hmac
import io
import json
import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import pydicom
from pydantic import BaseModel
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, HTTPError, RequestHandler

from pacs_node.attrs import InstanceAttrs
from pacs_node.config import Api
from pacs_node.journal import Instance, Journal, Study, study_key
from pacs_node.sender import server_tls_context
from pacs_node.spool import file_name, output_name, write_durably
from umsrep_core.errors import ClaimLost, ConfigError
from umsrep_core.phi import describe

log = logging.getLogger(__name__)

T = TypeVar("T")
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

    def check_xsrf_cookie(self) -> None:
        """No XSRF token (the console's forms have one): a bearer token is no cookie, and a
        browser never adds it to a request another site makes it send."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = exc.log_message if isinstance(exc, HTTPError) and exc.log_message else None
        self.finish({"error": message or self._reason})


class JobCall(Authenticated):
    """One journal call of a job, by name, its keyword arguments the JSON body."""

    async def post(self, method: str) -> None:
        if method not in JOB_CALLS:
            raise HTTPError(404, f"no job call {method}")
        try:
            kwargs = json.loads(self.request.body or b"{}")
            result = await off_loop(getattr(self.journal, method), **kwargs)
        except (TypeError, ValueError) as exc:
            raise HTTPError(400, f"{method}: {describe(exc)}") from exc
        except ClaimLost as exc:  # the try was silent and the job given to another
            raise HTTPError(409, str(exc)) from exc
        self.finish({"result": _plain(result)})


class Studies(Authenticated):
    """WADO-RS: a study version's instances, or one of them; STOW-RS: outputs made of it."""

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

    async def post(self, study_uid: str) -> None:
        study = self._study(study_uid)
        if study is None:
            raise HTTPError(404, "no such study")
        stored, failed = await off_loop(self._store, study,
                                        self.request.headers.get("Content-Type", ""),
                                        self.request.body, self.get_arguments("destination"))
        self.set_status(200 if not failed else 202 if stored else 409)
        self.set_header("Content-Type", "application/dicom+json")
        self.finish(json.dumps(_stow_response(stored, failed)))

    def _store(self, study: Study, content_type: str, body: bytes, destinations: list[str]
               ) -> tuple[list[tuple[Dataset, Path]], list[tuple[Dataset | None, int]]]:
        """Keep the instances of `study` that a STOW-RS body holds durably and queue them to
        `destinations`: (stored, failed with their FailureReason)."""
        try:
            parts = multipart_related(content_type, body)
        except ValueError as exc:
            raise HTTPError(415, str(exc)) from exc
        folder = self.data_dir / "outputs" / file_name(study.study_uid)
        stored: list[tuple[Dataset, Path]] = []
        failed: list[tuple[Dataset | None, int]] = []
        for part in parts:
            try:
                ds = pydicom.dcmread(io.BytesIO(part.body), stop_before_pixels=True)
                name = output_name(ds)
            except (InvalidDicomError, AttributeError, ValueError):
                failed.append((None, CANNOT_UNDERSTAND))
                continue
            if str(ds.get("StudyInstanceUID", "")) != study.study_uid:
                failed.append((ds, OTHER_STUDY))
                continue
            folder.mkdir(parents=True, exist_ok=True)
            write_durably(folder / name, _writer(part.body))
            stored.append((ds, folder / name))
        for destination in destinations:
            self.journal.enqueue(study.study_key, destination, [p for _, p in stored])
        return stored, failed

    def _version(self, study_uid: str) -> list[Instance]:
        study = self._study(study_uid)
        if study is not None and study.purged_at is not None:
            raise HTTPError(410, "its instances were removed by retention")
        return [] if study is None else self.journal.instances(study.study_key)

    def _study(self, study_uid: str) -> Study | None:
        """The version asked for (`version`), else the latest."""
        asked = self.get_argument("version", None)
        if asked is None:
            return self.journal.latest(study_uid)
        if asked.isdigit():
            return self.journal.study(study_key(study_uid, int(asked)))
        raise HTTPError(400, "version is a whole number")


async def off_loop(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`call` in a thread of the loop's executor: a fsync or a journal write of one worker's
    request must not hold up the others' (WADO-RS streams, heartbeats) on the one loop."""
    return await asyncio.get_running_loop().run_in_executor(
        None, functools.partial(call, *args, **kwargs))


# STOW-RS FailureReason (PS3.18 Table 10.5.3-2): a part that is no DICOM file; an instance of
# another study than the one posted to (dcm4chee's 0xC409, as the standard names none).
CANNOT_UNDERSTAND, OTHER_STUDY = 0xC000, 0xC409


def _stow_response(stored: list[tuple[Dataset, Path]],
                   failed: list[tuple[Dataset | None, int]]) -> dict[str, Any]:
    """The Store Instances Response Module (PS3.18 10.5.3), DICOM JSON."""
    def item(ds: Dataset | None, reason: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if ds is not None:
            out = {"00081150": {"vr": "UI", "Value": [str(ds.SOPClassUID)]},
                   "00081155": {"vr": "UI", "Value": [str(ds.SOPInstanceUID)]}}
        if reason is not None:
            out["00081197"] = {"vr": "US", "Value": [reason]}
        return out

    response: dict[str, Any] = {}
    if stored:
        response["00081199"] = {"vr": "SQ", "Value": [item(ds) for ds, _ in stored]}
    if failed:
        response["00081198"] = {"vr": "SQ", "Value": [item(ds, r) for ds, r in failed]}
    return response


@dataclass(frozen=True)
class Part:
    headers: Message
    body: bytes


def multipart_related(content_type: str, body: bytes) -> list[Part]:
    """The parts of a multipart/related body of application/dicom parts (PS3.18 8.6.1.2;
    both ends of this API). Split at the boundary (RFC 2046), each part's headers read by the
    standard library's parser: its MIME parser takes a second per 8 MB image, being line by
    line. ValueError for another content type."""
    header = email.parser.HeaderParser(policy=email.policy.HTTP).parsestr(
        f"Content-Type: {content_type}\r\n\r\n")
    boundary = header.get_param("boundary")
    if (header.get_content_type(), header.get_param("type")) != (
            "multipart/related", "application/dicom") or not isinstance(boundary, str):
        raise ValueError('multipart/related; type="application/dicom" with a boundary is '
                         "expected")
    parts = []
    for chunk in (b"\r\n" + body).split(b"\r\n--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):  # the close delimiter: the epilogue follows
            break
        rest = chunk.partition(b"\r\n")[2]  # after the delimiter line (its padding)
        head, _, payload = (b"", b"", rest[2:]) if rest.startswith(b"\r\n") else (
            rest.partition(b"\r\n\r\n"))
        headers = email.parser.BytesHeaderParser(policy=email.policy.HTTP).parsebytes(head)
        parts.append(Part(headers, payload))
    return parts


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


# More routes on the same server, and the settings they need, given the token: the REST API
# (pacs_node.rest) and the console (pacs_node.console).
Route = tuple[str, type[RequestHandler], dict[str, Any]]
MoreRoutes = Callable[[str], tuple[Sequence[Route], dict[str, Any]]]


class ApiServer:
    def __init__(self, api: Api, journal: Journal, data_dir: Path,
                 more: MoreRoutes = lambda _: ([], {})) -> None:
        assert api.port is not None and api.token_file is not None
        self.api, self.journal, self.data_dir = api, journal, data_dir
        self.token = read_token(api.token_file)
        self.more = more
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: HTTPServer | None = None

    def start(self) -> None:
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            handlers = {"journal": self.journal, "token": self.token, "data_dir": self.data_dir}
            more, settings = self.more(self.token)
            app = Application([
                (r"/dicomweb/studies/([^/]+)", Studies, handlers),
                (r"/dicomweb/studies/([^/]+)/series/([^/]+)/instances/([^/]+)", Studies,
                 handlers),
                (r"/api/journal/([a-z_]+)", JobCall, handlers),
                *more,
            ], max_body_size=MAX_OUTPUTS_BYTES, **settings)
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
        log.info("DICOMweb and the REST API on http%s://%s:%d (/dicomweb, /api/v1)",
                 "s" if self.api.tls else "", self.api.bind, self.port)

    def stop(self) -> None:
        if self._loop is not None and self._server is not None:
            self._loop.call_soon_threadsafe(self._server.stop)
            self._loop.call_soon_threadsafe(self._loop.stop)
