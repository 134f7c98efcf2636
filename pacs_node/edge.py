"""pynetdicom's association server, bounded in time, size and number before anyone is trusted.

pynetdicom 3.0 (as of 3.0.4) trusts the peer at the transport level:
- a PDU is read with blocking `recv` calls and no timeout (pydicom/pynetdicom#565, #653), so a
  peer that sends part of a PDU holds its thread, its association slot and the node's stop for
  as long as it likes: the ARTIM and idle timers run in the same blocked thread;
- a PDU is read whole into memory whatever length its header declares, the negotiated maximum
  PDU length included;
- a TLS server socket handshakes inside the accept loop (`get_request`), so one silent TCP
  connection stops every other caller (no upstream issue; fo-dicom#1766 is the same defect);
- every connection counts against `maximum_associations` from the moment it is accepted, before
  its caller is known;
- a message its reader cannot decode (an empty UID in a C-STORE command) ends the reader's
  thread with no EVT_CONN_CLOSE, so handlers never learn that the connection is over (no
  upstream issue found).

Here, as subclasses: `BoundedSocket` reads each PDU against a deadline (the request timeout,
ARTIM, until the association is established; the network timeout per PDU after), refuses a
PDU whose declared length is over the limit before reading it, and writes with the network
timeout. `BoundedServer` handshakes TLS in the connection's own thread within the request
timeout, keeps at most `max_pending` connections that have no association yet (the oldest is
closed for a new one), leaves the association limit to the caller check (`scp.Receiver`),
calls `on_end` for each association once its thread is over, however it ended, and on
shutdown closes every connection so that the node stops within seconds.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from socketserver import BaseServer
from typing import Any, cast

from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from pacs_node import metrics

log = logging.getLogger(__name__)

P_DATA_TF = 0x04
PDU_TYPES = range(0x01, 0x08)
CONTROL_PDU_MAX = 1 << 20  # association, release and abort PDUs: a few KB in practice
UNLIMITED_PDU_MAX = 1 << 26  # P-DATA when max_pdu is 0 ("no limit" as negotiated)
ABORT_INVALID_PARAMETER = bytes.fromhex("07000000000400000206")  # A-ABORT, provider, reason 6
READ_CHUNK = 1 << 16
STOP_JOIN_S = 5.0  # how long a stop waits, in all, for the associations to end


@dataclass(frozen=True)
class Limits:
    request_timeout: float  # connection to whole A-ASSOCIATE-RQ, TLS handshake included
    network_timeout: float  # each PDU once associated, and each write
    max_pdu: int  # the P-DATA PDU length we negotiate (0: none negotiated)
    max_pending: int  # connections without an association yet

    def pdu_limit(self, pdu_type: int) -> int:
        if pdu_type != P_DATA_TF:
            return CONTROL_PDU_MAX
        return self.max_pdu or UNLIMITED_PDU_MAX


class BoundedSocket(AssociationSocket):
    """pynetdicom's socket with deadlines on reads and writes and a PDU length limit.

    pynetdicom builds its AssociationSocket inside `RequestHandler._create_association`, with
    no hook for a subclass; `bound` turns that instance into this class (methods only, and the
    few attributes set there).
    """

    limits: Limits
    peer: str
    opened: float
    associated: bool
    ended: bool  # the peer closed it, or the node did
    _deadline: float
    _body_due: bool

    @classmethod
    def bound(cls, sock: AssociationSocket, limits: Limits, peer: str,
              opened: float) -> BoundedSocket:
        sock.__class__ = cls
        bounded = cast(BoundedSocket, sock)
        bounded.limits, bounded.peer = limits, peer
        bounded.opened, bounded.associated, bounded.ended = opened, False, False
        bounded._deadline, bounded._body_due = 0.0, False
        if bounded.socket is not None:
            bounded.socket.settimeout(limits.network_timeout)  # bounds every send
        return bounded

    def recv(self, nr_bytes: int) -> bytearray:
        """pynetdicom reads a PDU as its 6-byte header, then its body: each within the PDU's
        deadline; a header declaring more than allowed reads as a closed connection."""
        if self._body_due:
            self._body_due = False
            return self._read(nr_bytes)
        self.associated = self.associated or self.assoc.is_established
        self._deadline = (time.monotonic() + self.limits.network_timeout if self.associated
                          else self.opened + self.limits.request_timeout)
        header = self._read(nr_bytes)
        if len(header) < 6:
            return header
        pdu_type, _, length = struct.unpack(">BBL", header[:6])
        if pdu_type not in PDU_TYPES:
            return header  # pynetdicom aborts on it
        limit = self.limits.pdu_limit(pdu_type)
        if length > limit:
            self._give_up("pdu_too_large", f"a PDU of type 0x{pdu_type:02X} declares "
                          f"{length} bytes, over the {limit} allowed", ABORT_INVALID_PARAMETER)
            return bytearray()  # pynetdicom: connection closed
        self._body_due = True
        return header

    def _read(self, nr_bytes: int) -> bytearray:
        data = bytearray()
        sock = self.socket
        while sock is not None and len(data) < nr_bytes:
            left = self._deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                chunk = sock.recv(min(READ_CHUNK, nr_bytes - len(data)))
            except TimeoutError:
                phase = "a PDU" if self.associated else "the association request"
                self._give_up("timeout", f"{phase} did not arrive whole in time")
                break
            except (OSError, ValueError):  # reset, or closed by a stop
                self.ended = True
                break
            if not chunk:
                self.ended = True
                break
            data += chunk
        if self.socket is not None:
            self.socket.settimeout(self.limits.network_timeout)
        return data

    def _give_up(self, reason: str, why: str, farewell: bytes = b"") -> None:
        self.ended = True
        metrics.CONNECTIONS_CLOSED.labels(reason).inc()
        log.warning("connection from %s closed: %s", self.peer, why)
        sock = self.socket
        if sock is not None:
            with contextlib.suppress(OSError):
                if farewell:
                    sock.sendall(farewell)
                _shut(sock)


class BoundedRequestHandler(RequestHandler):
    server: BoundedServer

    def handle(self) -> None:
        """The association runs in its own thread (pynetdicom's); this connection's thread
        waits for it, so that the server knows when a connection is over, and says so."""
        super().handle()
        assoc = self.server.connection(self.request).assoc
        if assoc is not None:
            assoc.join()
            self.server.on_end(assoc)

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        connection = self.server.connection(self.request)
        connection.socket = BoundedSocket.bound(
            cast(AssociationSocket, assoc.dul.socket), self.server.limits, connection.peer,
            connection.opened)
        connection.assoc = assoc
        return assoc


@dataclass
class Connection:
    raw: socket.socket
    peer: str
    opened: float = field(default_factory=time.monotonic)
    socket: BoundedSocket | None = None
    assoc: Association | None = None
    thread: threading.Thread | None = None
    closed: bool = False

    @property
    def pending(self) -> bool:
        """Open, with no association yet: its caller is not known. (pynetdicom may keep a
        connection's threads a while after it ended: those are not counted.)"""
        if self.closed:
            return False
        if self.socket is None:
            return True
        return not (self.socket.ended or self.socket.associated
                    or cast(Association, self.assoc).is_established)

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            _shut(self.raw)


class BoundedServer(ThreadedAssociationServer):
    """Made by `AE.make_server(..., server_class=BoundedServer, limits=..., on_end=...)`."""

    daemon_threads = True  # joined by `shutdown`, with a deadline
    block_on_close = False

    def __init__(self, ae: Any, address: Any, ae_title: str, contexts: Any,
                 ssl_context: ssl.SSLContext | None = None, *, evt_handlers: Any = None,
                 limits: Limits, on_end: Callable[[Association], None]) -> None:
        self.limits = limits
        self.on_end = on_end  # each association's, once its thread has ended
        self._connections: dict[socket.socket, Connection] = {}
        self._lock = threading.Lock()
        super().__init__(ae, address, ae_title, contexts, ssl_context,
                         evt_handlers=evt_handlers, request_handler=BoundedRequestHandler)

    def connection(self, raw: socket.socket) -> Connection:
        with self._lock:
            return self._connections[raw]

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept only: the TLS handshake runs in the connection's thread."""
        raw, address = cast(socket.socket, self.socket).accept()
        if self.ssl_context:
            raw = self.ssl_context.wrap_socket(raw, server_side=True,
                                               do_handshake_on_connect=False)
        return raw, address

    def process_request(self, request: Any, client_address: Any) -> None:
        connection = Connection(request, str(client_address[0]))
        with self._lock:
            pending = [c for c in self._connections.values() if c.pending]
            if len(pending) >= self.limits.max_pending:
                oldest = min(pending, key=lambda c: c.opened)
                metrics.CONNECTIONS_CLOSED.labels("pending_limit").inc()
                log.warning("connection from %s closed: %d connections have no association "
                            "yet, the most allowed; %s is newer", oldest.peer,
                            len(pending), connection.peer)
                oldest.close()
            self._connections[request] = connection
        super().process_request(request, client_address)  # starts the connection's thread

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        connection = self.connection(request)
        connection.thread = threading.current_thread()
        try:
            if isinstance(request, ssl.SSLSocket) and not self._handshake(connection):
                self.shutdown_request(request)
                return
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                del self._connections[request]

    def _handshake(self, connection: Connection) -> bool:
        tls = cast(ssl.SSLSocket, connection.raw)
        try:
            tls.settimeout(max(0.001, connection.opened + self.limits.request_timeout
                               - time.monotonic()))
            tls.do_handshake()
        except (OSError, ValueError) as exc:  # ssl.SSLError and timeouts are OSErrors
            metrics.CONNECTIONS_CLOSED.labels("tls_handshake").inc()
            log.warning("connection from %s closed: TLS handshake failed: %s",
                        connection.peer, exc)
            return False
        return True

    def shutdown(self) -> None:
        """Stop accepting and close every connection; wait a little for the associations to
        end (a C-STORE being stored finishes). A connection with no association yet ends
        its DUL thread at once: pynetdicom's would wait out the request timeout, and it keeps
        the process alive."""
        BaseServer.shutdown(self)
        with self._lock:
            connections = list(self._connections.values())
        associated = [c for c in connections if not c.pending]
        for connection in connections:
            unknown = connection.pending
            connection.close()
            if unknown and connection.assoc is not None:
                connection.assoc.dul.kill_dul()
        deadline = time.monotonic() + STOP_JOIN_S
        for connection in associated:
            if connection.thread is not None:
                connection.thread.join(max(0.0, deadline - time.monotonic()))
        self.server_close()


def _shut(sock: socket.socket) -> None:
    """End both directions, so that a read blocked in another thread returns. The plain
    socket's shutdown, also for TLS: SSLSocket's drops its TLS state under that reader."""
    socket.socket.shutdown(sock, socket.SHUT_RDWR)
