"""The C-STORE / C-ECHO SCU: sends DICOM files to a peer, and the TLS contexts of both ends.

Files are streamed as they are on disk (no decoding, bytes unchanged) over a presentation
context proposed in the file's own transfer syntax; uncompressed files also get an implicit
VR little endian context, the one every SCP must accept, and are converted only when the
peer accepted nothing else. At most 128 contexts fit one association: more files are split
over several associations.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ImplicitVRLittleEndian
from pynetdicom import AE, _config, build_context, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import A_ABORT, A_ASSOCIATE, A_P_ABORT
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

from pacs_node.config import TLS
from umsrep_core.errors import ConfigError, DeliveryError
from umsrep_core.phi import describe

# DIMSE statuses (PS3.4 B.2.3, PS3.7 C). Warnings mean the peer stored the instance.
SUCCESS = 0x0000
WARNING_COERCION = 0xB000
WARNING_ELEMENTS_DISCARDED = 0xB006
WARNING_DATASET_MISMATCH = 0xB007
STORED = frozenset({SUCCESS, WARNING_COERCION, WARNING_ELEMENTS_DISCARDED,
                    WARNING_DATASET_MISMATCH})
A_ASSOCIATE_ACCEPTED = 0x00

MAX_CONTEXTS = 128  # presentation context IDs are the odd numbers 1..255 (PS3.8 9.3.2.2)
DICM_OFFSET = 128
DICM = b"DICM"

Context = tuple[str, str]  # (SOP class UID, transfer syntax UID)


@dataclass(frozen=True)
class SendResult:
    path: Path
    ok: bool
    status: int | None
    error: str | None


class SendAborted(DeliveryError):
    """An association was lost part-way: `results` holds what was settled before it."""

    def __init__(self, message: str, results: list[SendResult]) -> None:
        super().__init__(message)
        self.results = results


@dataclass(frozen=True)
class _File:
    index: int  # position in the caller's list: results come back in that order
    path: Path
    sop_class: str
    transfer_syntax: UID
    contexts: list[Context]


def is_dicom(path: Path) -> bool:
    """A DICOM file (PS3.10): 'DICM' after the 128-byte preamble."""
    try:
        with open(path, "rb") as f:
            f.seek(DICM_OFFSET)
            return f.read(len(DICM)) == DICM
    except OSError:
        return False


def expand(paths: Iterable[Path]) -> tuple[list[Path], list[Path]]:
    """Files given and files under given folders (sorted): (DICOM files, skipped others)."""
    files: list[Path] = []
    for path in paths:
        files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    dicom = [p for p in files if is_dicom(p)]
    return dicom, [p for p in files if p not in set(dicom)]


# --- TLS -------------------------------------------------------------------------------------


@contextmanager
def _tls_errors(tls: TLS) -> Iterator[None]:
    try:
        yield
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"TLS certificate, key or CA cannot be loaded "
                          f"({tls.cert}, {tls.key}, {tls.ca}): {exc}") from exc


def client_tls_context(tls: TLS) -> ssl.SSLContext:
    """This end's certificate; the server must chain to `ca` (none given: the system's CAs)
    and match the host name it is reached by."""
    with _tls_errors(tls):
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(tls.cert, tls.key)
    return ctx


def server_tls_context(tls: TLS) -> ssl.SSLContext:
    """The SCP's context: with `ca`, clients must present a certificate that chains to it."""
    with _tls_errors(tls):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(tls.cert, tls.key)
        if tls.ca is not None:
            ctx.load_verify_locations(cafile=tls.ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


# --- associations ----------------------------------------------------------------------------


def _reason(primitive: object, opened: bool, timeout: float) -> str:
    """Why no association: from the last ACSE primitive received, if any."""
    if isinstance(primitive, A_ASSOCIATE):
        if primitive.result != A_ASSOCIATE_ACCEPTED:
            return (f"association rejected ({primitive.result_str}, by "
                    f"{primitive.source_str}: {primitive.reason_str})")
        return "the peer accepted none of the proposed presentation contexts"
    if isinstance(primitive, A_ABORT | A_P_ABORT):
        # With TLS 1.3 a refused client certificate shows here, after the handshake.
        return "association aborted by the peer or the connection (TLS certificate refused?)"
    if opened:
        return f"no association response within {timeout:g} s"
    return "connection failed (peer unreachable, or TLS handshake refused)"


@contextmanager
def _associate(host: str, port: int, contexts: list[Context] | None, *, called_ae: str,
               calling_ae: str, tls: TLS | None, timeout: float) -> Iterator[Association]:
    """An established association, released on exit; DeliveryError when there is none."""
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    requested = ([build_context(Verification)] if contexts is None
                 else [build_context(cls, [ts]) for cls, ts in contexts])
    received: list[object] = []
    opened: list[bool] = []

    def on_acse(event: Event) -> None:
        received.append(getattr(event, "primitive", None))  # set dynamically by pynetdicom

    def on_open(event: Event) -> None:
        opened.append(True)
        # pynetdicom writes a request's command and data set as separate PDUs: with Nagle's
        # algorithm the second waits for the peer's delayed ACK, about 40 ms per file.
        sock = event.assoc.dul.socket
        if sock is not None and sock.socket is not None:
            sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    tls_args = None if tls is None else (client_tls_context(tls), host)
    assoc = ae.associate(host, port, requested, ae_title=called_ae, tls_args=tls_args,
                         evt_handlers=[(evt.EVT_ACSE_RECV, on_acse),
                                       (evt.EVT_CONN_OPEN, on_open)])
    if not assoc.is_established:
        reason = _reason(received[-1] if received else None, bool(opened), timeout)
        raise DeliveryError(f"{called_ae}@{host}:{port} (calling {calling_ae}): {reason}")
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def echo(host: str, port: int, *, called_ae: str = "ANY-SCP", calling_ae: str = "UMSREP",
         tls: TLS | None = None, timeout: float = 10) -> int:
    """C-ECHO the peer; returns its status (0 = success)."""
    with _associate(host, port, None, called_ae=called_ae, calling_ae=calling_ae, tls=tls,
                    timeout=timeout) as assoc:
        status = assoc.send_c_echo()
        if "Status" not in status:
            raise DeliveryError(f"{called_ae}@{host}:{port}: no C-ECHO response "
                                f"(association lost)")
        return int(status.Status)


# --- C-STORE ---------------------------------------------------------------------------------

# pynetdicom streams a file without decoding it only under this process-wide switch; it is
# set for the duration of our own sends alone, so that other code sees pynetdicom's default.
_streaming_lock = threading.Lock()


@contextmanager
def _streaming() -> Iterator[None]:
    with _streaming_lock:
        before = _config.STORE_SEND_CHUNKED_DATASET
        _config.STORE_SEND_CHUNKED_DATASET = True
        try:
            yield
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = before


def _contexts(sop_class: str, ts: UID) -> list[Context]:
    own = (sop_class, str(ts))
    if ts.is_compressed or ts == ImplicitVRLittleEndian:
        return [own]
    return [own, (sop_class, ImplicitVRLittleEndian)]


def _read_meta(index: int, path: Path) -> _File | SendResult:
    try:
        meta = read_file_meta_info(path)
        sop_class = str(meta.MediaStorageSOPClassUID)
        ts = UID(meta.TransferSyntaxUID)
    except (OSError, InvalidDicomError, AttributeError) as exc:
        return SendResult(path, False, None, f"not a readable DICOM file: {describe(exc)}")
    return _File(index, path, sop_class, ts, _contexts(sop_class, ts))


def _batches(files: list[_File]) -> Iterator[tuple[list[_File], list[Context]]]:
    """Consecutive files whose contexts fit one association."""
    batch: list[_File] = []
    contexts: dict[Context, None] = {}  # an ordered set
    for f in files:
        new = [c for c in f.contexts if c not in contexts]
        if len(contexts) + len(new) > MAX_CONTEXTS:
            yield batch, list(contexts)
            batch, contexts = [], {}
        batch.append(f)
        contexts.update(dict.fromkeys(f.contexts))
    if batch:
        yield batch, list(contexts)


def _status_text(status: Dataset) -> str:
    code = int(status.Status)
    text = STORAGE_SERVICE_CLASS_STATUS.get(code, ("", "unknown status"))[1]
    comment = status.get("ErrorComment")
    return f"status 0x{code:04X} {text}" + (f": {comment}" if comment else "")


def _store(assoc: Association, f: _File, accepted: set[Context]) -> SendResult | None:
    """Send one file; None when the association was lost."""
    fallback = (f.sop_class, ImplicitVRLittleEndian)
    try:
        if (f.sop_class, str(f.transfer_syntax)) in accepted:
            status = assoc.send_c_store(f.path)  # streamed as it is
        elif fallback in f.contexts and fallback in accepted:
            status = assoc.send_c_store(pydicom.dcmread(f.path))  # pynetdicom re-encodes it
        else:
            return SendResult(f.path, False, None, f"the peer accepted no context for "
                              f"{UID(f.sop_class).name} in {f.transfer_syntax.name}")
    except (OSError, ValueError, AttributeError, InvalidDicomError) as exc:
        return SendResult(f.path, False, None, f"cannot send: {describe(exc)}")
    if "Status" not in status:
        return None
    code = int(status.Status)
    ok = code in STORED
    return SendResult(f.path, ok, code, None if ok else _status_text(status))


def send_files(host: str, port: int, paths: Sequence[Path], *, called_ae: str = "ANY-SCP",
               calling_ae: str = "UMSREP", tls: TLS | None = None,
               timeout: float = 30) -> list[SendResult]:
    """C-STORE the files; one result per path, in order.

    A file the peer refuses gets a failed result; no association (rejected, unreachable) or
    one lost part-way raises DeliveryError (SendAborted with the results settled so far).
    """
    results: dict[int, SendResult] = {}
    files: list[_File] = []
    for i, path in enumerate(paths):
        read = _read_meta(i, path)
        if isinstance(read, SendResult):
            results[i] = read
        else:
            files.append(read)

    def settled() -> list[SendResult]:
        return [results[i] for i in sorted(results)]

    for batch, contexts in _batches(files):
        try:
            with _associate(host, port, contexts, called_ae=called_ae, calling_ae=calling_ae,
                            tls=tls, timeout=timeout) as assoc:
                accepted = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
                            for cx in assoc.accepted_contexts}
                for f in batch:
                    result = None
                    if assoc.is_established:  # the peer may abort between two files
                        with _streaming():
                            result = _store(assoc, f, accepted)
                    if result is None:
                        raise DeliveryError(f"{called_ae}@{host}:{port}: association lost "
                                            f"while sending {f.path.name}")
                    results[f.index] = result
        except DeliveryError as exc:
            raise SendAborted(str(exc), settled()) from exc
    return settled()

