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
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import uuid
from pathlib import Path
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, HTTPError, RequestHandler

from pacs_node.config import Api
from pacs_node.journal import Instance, Journal
from pacs_node.sender import server_tls_context
from umsrep_core.errors import ConfigError

log = logging.getLogger(__name__)

CHUNK = 1 << 20


def read_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"api.token_file {path}: {exc.strerror or exc}") from exc
    if len(token) < 16:
        raise ConfigError(f"api.token_file {path}: a token of at least 16 characters is needed")
    return token


class Retrieve(RequestHandler):
    """WADO-RS: a study version's instances, or one of them."""

    def initialize(self, journal: Journal, token: str) -> None:
        self.journal, self.token = journal, token

    def prepare(self) -> None:
        given = self.request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, f"Bearer {self.token}".encode()):
            self.set_header("WWW-Authenticate", 'Bearer realm="umsrep"')
            raise HTTPError(401, "a bearer token is needed")

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
            study = self.journal.study(f"{study_uid}@{int(asked)}")
        else:
            raise HTTPError(400, "version is a whole number")
        return [] if study is None else self.journal.instances(study.study_key)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = exc.log_message if isinstance(exc, HTTPError) and exc.log_message else None
        self.finish({"error": message or self._reason})


class ApiServer:
    def __init__(self, api: Api, journal: Journal) -> None:
        assert api.port is not None and api.token_file is not None
        self.api, self.journal = api, journal
        self.token = read_token(api.token_file)
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: HTTPServer | None = None

    def start(self) -> None:
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            handlers = {"journal": self.journal, "token": self.token}
            app = Application([
                (r"/dicomweb/studies/([^/]+)", Retrieve, handlers),
                (r"/dicomweb/studies/([^/]+)/series/([^/]+)/instances/([^/]+)", Retrieve,
                 handlers),
            ])
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
