"""The DICOM edge: association checks, C-ECHO and C-STORE into the spool and journal.

Small handlers bound to pynetdicom events. pynetdicom writes each dataset, bytes as received,
to a temporary file in the spool while it arrives; the handler checks it, fsyncs it, links
it to its final name (never over a stored file: the same bytes again are a duplicate, other
bytes a conflict kept beside the first) and commits the journal row, and only then answers
Success.
"""

from __future__ import annotations

import filecmp
import io
import logging
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Any, BinaryIO, cast

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import Tag
from pydicom.uid import UID
from pynetdicom import AE, _config, dimse_messages, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import Verification, uid_to_service_class  # type: ignore[attr-defined]

from pacs_node import attrs, metrics
from pacs_node.config import Caller, Config
from pacs_node.edge import BoundedServer, Limits
from pacs_node.incoming import Incoming
from pacs_node.journal import Journal
from pacs_node.sender import server_tls_context
from pacs_node.spool import Spool, check_uid, versions
from umsrep_core.errors import IngestError
from umsrep_core.phi import describe

log = logging.getLogger(__name__)

# C-STORE statuses (PS3.4 B.2.3, PS3.7 C).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
SOP_CLASS_NOT_SUPPORTED = 0x0122
INVALID_SOP_INSTANCE = 0x0117
# A-ASSOCIATE-RJ (result, source, diagnostic): rejected permanently by the service user,
# calling / called AE title not recognised; rejected for now by the service provider
# (presentation), local limit exceeded.
RJ_CALLING_AE = (0x01, 0x01, 0x03)
RJ_CALLED_AE = (0x01, 0x01, 0x07)
RJ_LIMIT = (0x02, 0x03, 0x02)

DICOM_ROOT = "1.2.840.10008."
# Registry SOP classes named "... Storage" that store no instances: DICOMDIR, Storage
# Commitment push and (retired) pull.
NOT_STORAGE = frozenset({"1.2.840.10008.1.3.10", "1.2.840.10008.1.20.1", "1.2.840.10008.1.20.2"})
UNDEFINED_LENGTH = 0xFFFFFFFF
SEQUENCE_DELIMITER = bytes.fromhex("feffdde000000000")
PIXEL_DATA = Tag(0x7FE0, 0x0010)
META_START = 132  # preamble and "DICM"
DEFER_BYTES = 4096  # values larger than this are not read: only their length is checked


class Rejected(Exception):
    """A C-STORE refused with a DIMSE status; the reason goes to the journal."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass
class AssociationLog:
    assoc: Association
    calling_ae: str
    called_ae: str  # the one the caller asked for, of the node's titles
    peer: str
    started: float = field(default_factory=time.monotonic)
    stored: int = 0
    failed: int = 0
    studies: set[str] = field(default_factory=set)


def caller_allowed(callers: list[Caller], calling_ae: str, peer_host: str) -> bool:
    for caller in callers:
        if caller.ae_title not in ("*", calling_ae):
            continue
        if caller.host is None or _same_host(caller.host, peer_host):
            return True
    return False


def _same_host(a: str, b: str) -> bool:
    try:
        ia, ib = ip_address(a), ip_address(b)
    except ValueError:
        return a == b
    # An IPv4 peer may show up as ::ffff:a.b.c.d on a dual-stack socket.
    ia = getattr(ia, "ipv4_mapped", None) or ia
    ib = getattr(ib, "ipv4_mapped", None) or ib
    return ia == ib


def parse(path: Path, syntax: UID) -> tuple[Dataset, int]:
    """The dataset of a received file, large values deferred (not read); and the length its
    element offsets count against (the file's, or the inflated dataset's when deflated)."""
    with open(path, "rb") as f:
        # pynetdicom writes the file meta, group length first. Not read_file_meta_info's
        # group length: it reads on into group 0002 elements that some senders put in the
        # dataset itself (a file with two meta groups, as dcmtk sends it) and keeps the last.
        f.seek(META_START + 8)
        meta_end = META_START + 12 + int.from_bytes(f.read(4), "little")
        f.seek(meta_end)
        stream: BinaryIO = f
        length = os.fstat(f.fileno()).st_size
        if syntax.is_deflated:
            stream = io.BytesIO(zlib.decompress(f.read(), -zlib.MAX_WBITS))
            length = len(stream.getbuffer())
        ds = read_dataset(stream, syntax.is_implicit_VR, syntax.is_little_endian,
                          defer_size=DEFER_BYTES)
    return ds, length


# The numbers an image's size is computed from: each a whole number of at least 1.
IMAGE_NUMBERS = ("Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "BitsAllocated")


def incomplete(ds: Dataset, length: int, syntax: UID) -> str | None:
    """Why a parsed dataset is not whole, or None.

    pydicom reads a short last element silently, so the declared lengths of the raw
    elements are checked against the bytes received; and native pixel data shorter or
    longer than its image attributes is no image (empty pixel data is: an image without
    pixels), nor is one whose size attributes are not positive numbers.
    """
    if not ds:
        return "dataset is empty"
    last = ds._dict[max(ds._dict)]
    if isinstance(last, RawDataElement):
        if last.length == UNDEFINED_LENGTH:
            if last.value_tell + len(last.value or b"") + len(SEQUENCE_DELIMITER) > length:
                return "dataset is truncated before its last sequence delimiter"
        elif last.value_tell + last.length > length:
            return "dataset is truncated in its last element"
    unfit = [k for k in IMAGE_NUMBERS if _number(ds, k, 1) < 1]
    if unfit:  # NumberOfFrames -1 would pass every size check
        return f"{', '.join(unfit)} not a positive whole number"
    pixels = ds._dict.get(PIXEL_DATA)
    if pixels is not None and not syntax.is_compressed:
        size = pixels.length if isinstance(pixels, RawDataElement) else len(pixels.value)
        expected = (image_pixels(ds) * _number(ds, "SamplesPerPixel", 1)
                    * _number(ds, "BitsAllocated", 8) + 7) // 8
        # Empty pixel data is stored, as a PACS stores it: a cut-off image has some bytes,
        # and one with more than its image needs (padding to even aside) is no such image.
        if size and size not in (expected, expected + expected % 2):
            return f"pixel data has {size} bytes, its image needs {expected}"
    return None


def _number(ds: Dataset, keyword: str, default: int) -> int:
    """An image attribute as a number, `default` where absent or empty, 0 where it is none."""
    try:
        value = ds.get(keyword)  # an IS that is no number raises as it is read
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return 0


def image_pixels(ds: Dataset) -> int:
    """Rows x columns x frames: what the image-size limit counts."""
    return _number(ds, "Rows", 0) * _number(ds, "Columns", 0) * _number(ds, "NumberOfFrames", 1)


def storage_supported(sop_class_uid: str) -> bool:
    """Private classes and the public Storage SOP classes, the retired ones included.

    pynetdicom knows the current storage classes only; the DICOM registry (PS3.6 Annex A,
    pydicom's UID dictionary) also names the retired ones (Ultrasound Image Storage
    1.2.840.10008.5.1.4.1.1.6, ...), which a PACS still stores: old archives hold them.
    """
    if not sop_class_uid.startswith(DICOM_ROOT):
        return True  # private: stored as sent
    if issubclass(uid_to_service_class(sop_class_uid), StorageServiceClass):
        return True
    uid = UID(sop_class_uid)
    return uid.type == "SOP Class" and "Storage" in uid.name and uid not in NOT_STORAGE


class Receiver:
    """The node's DICOM edge. `on_release(study_keys)` runs when an association is released."""

    def __init__(self, config: Config, spool: Spool, journal: Journal,
                 on_release: Callable[[set[str]], None]) -> None:
        self.config = config
        self.spool = spool
        self.journal = journal
        self.on_release = on_release
        self.incoming = Incoming(spool.incoming, config.node.min_free_disk_mb)
        self._assocs: dict[int, AssociationLog] = {}
        self._lock = threading.Lock()

    # --- association ------------------------------------------------------------------------

    def handlers(self) -> list[Any]:
        return [
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_C_ECHO, lambda event: SUCCESS),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_RELEASED, self.on_released),
        ]

    def on_requested(self, event: Event) -> None:
        assoc: Association = event.assoc
        request = assoc.requestor.primitive
        assert request is not None  # EVT_REQUESTED carries the A-ASSOCIATE request
        calling = request.calling_ae_title.strip()
        called = request.called_ae_title.strip()
        peer = assoc.requestor.address
        node = self.config.node
        if not caller_allowed(node.callers, calling, peer):
            self._reject(assoc, RJ_CALLING_AE, "calling_ae", "calling AE %r from %s is not "
                         "allowed", calling, peer)
            return
        if called not in node.ae_titles:
            self._reject(assoc, RJ_CALLED_AE, "called_ae", "called AE %r (from %r at %s) is "
                         "not ours", called, calling, peer)
            return
        with self._lock:  # a slot only for a known caller (the edge bounds the others)
            # Released or aborted: the slot is free, though its threads may still be ending.
            taken = sum(not (e.assoc.is_released or e.assoc.is_aborted)
                        for e in self._assocs.values())
            admitted = taken < node.max_associations
            if admitted:
                self._assocs[id(assoc)] = AssociationLog(assoc, calling, called, peer)
        if not admitted:
            self._reject(assoc, RJ_LIMIT, "limit", "%d associations are open, the most "
                         "allowed (%r from %s)", node.max_associations, calling, peer)

    def _reject(self, assoc: Association, rsd: tuple[int, int, int], reason: str, why: str,
                *args: object) -> None:
        """An A-ASSOCIATE-RJ, counted, logged and journaled: its row's status is the
        reject's result, source and diagnostic as 0xRRSSDD (0x010103: calling AE title)."""
        metrics.ASSOCIATIONS_REJECTED.labels(reason).inc()
        text = "association rejected: " + why % args
        log.warning("%s", text)
        request = assoc.requestor.primitive
        try:
            self.journal.reject(
                calling_ae=request.calling_ae_title.strip() if request else "",
                peer=assoc.requestor.address, sop_instance_uid=None,
                status=rsd[0] << 16 | rsd[1] << 8 | rsd[2], reason=text)
        except sqlite3.OperationalError as exc:  # a full disk: reject anyway
            log.warning("the rejection is not journaled: %s", exc)
        assoc.acse.send_reject(*rsd)
        assoc.kill()  # waits until the A-ASSOCIATE-RJ has gone out, as pynetdicom's own path

    def _log_of(self, assoc: Association) -> AssociationLog:
        with self._lock:
            return self._assocs[id(assoc)]

    def on_released(self, event: Event) -> None:
        with self._lock:
            entry = self._assocs.get(id(event.assoc))
        if entry is not None and entry.studies:
            self.on_release(set(entry.studies))

    def on_ended(self, assoc: Association) -> None:
        """Its connection is over, however it ended (the edge calls it: pynetdicom sends no
        EVT_CONN_CLOSE when a message it cannot decode kills its reader): the slot is free
        and what the association left half-received is deleted."""
        partial = self.incoming.discard(assoc.dul)  # datasets it never finished
        with self._lock:
            entry = self._assocs.pop(id(assoc), None)
        if entry is None:
            return
        outcome = "released" if assoc.is_released else "aborted"
        metrics.ASSOCIATIONS.labels(outcome).inc()
        log.info("association %s: calling AE %r from %s, %d stored, %d failed, %d studies, "
                 "%d partial datasets deleted, %.2f s", outcome, entry.calling_ae, entry.peer,
                 entry.stored, entry.failed, len(entry.studies), partial,
                 time.monotonic() - entry.started)

    # --- C-STORE ----------------------------------------------------------------------------

    def on_store(self, event: Event) -> int | Dataset:
        with metrics.STORE_SECONDS.time():
            return self._on_store(event)

    def _on_store(self, event: Event) -> int | Dataset:
        entry = self._log_of(event.assoc)
        request = cast(C_STORE, event.request)
        sop_uid = str(request.AffectedSOPInstanceUID or "")
        try:
            key = self._store(event, entry)
        except Rejected as exc:
            entry.failed += 1
            metrics.REFUSED.labels(f"0x{exc.status:04X}").inc()
            log.warning("C-STORE refused (0x%04X) from %r: %s", exc.status, entry.calling_ae, exc)
            try:
                self.journal.reject(calling_ae=entry.calling_ae, peer=entry.peer,
                                    sop_instance_uid=sop_uid[:64] or None, status=exc.status,
                                    reason=str(exc))
            except sqlite3.OperationalError as journal_error:  # a full disk: answer anyway
                log.warning("the refusal is not journaled: %s", journal_error)
            status = Dataset()
            status.Status = exc.status
            status.ErrorComment = str(exc)[:64]
            return status
        entry.stored += 1
        entry.studies.add(key)
        metrics.STORED.inc()
        return SUCCESS

    def _store(self, event: Event, entry: AssociationLog) -> str:
        received = event.dataset_path  # written by pynetdicom as the fragments arrived
        short = self.incoming.claim(received)
        if short:
            raise Rejected(OUT_OF_RESOURCES, short)
        node = self.config.node
        if self.spool.free_mb() < node.min_free_disk_mb:
            raise Rejected(OUT_OF_RESOURCES,
                           f"free disk below the {node.min_free_disk_mb} MB mark")
        sop_class = str(event.request.AffectedSOPClassUID or "")
        if not storage_supported(sop_class):
            raise Rejected(SOP_CLASS_NOT_SUPPORTED, f"SOP class {sop_class} is not storage")
        syntax = event.context.transfer_syntax
        try:
            ds, parsed_len = parse(received, syntax)
        except Exception as exc:  # pydicom raises many kinds on malformed data
            raise Rejected(CANNOT_UNDERSTAND,
                           f"dataset cannot be parsed: {describe(exc)}") from exc
        problem = incomplete(ds, parsed_len, syntax)
        if problem:
            raise Rejected(CANNOT_UNDERSTAND, problem)
        try:
            sop_uid = check_uid(ds.get("SOPInstanceUID"), "SOPInstanceUID")
            study_uid = check_uid(ds.get("StudyInstanceUID"), "StudyInstanceUID")
            series_uid = check_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID")
        except IngestError as exc:
            status = INVALID_SOP_INSTANCE if "SOPInstance" in str(exc) else DATASET_MISMATCH
            raise Rejected(status, str(exc)) from exc
        pixels = image_pixels(ds)
        if pixels > node.max_image_pixels:
            raise Rejected(OUT_OF_RESOURCES, f"image of {pixels} pixels exceeds the maximum "
                                             f"of {node.max_image_pixels}")
        instance_attrs = attrs.extract(ds, entry.calling_ae, entry.called_ae)
        first = self.spool.path(study_uid, series_uid, sop_uid)
        for path in versions(first):  # never over bytes already stored
            try:
                size = self.spool.adopt(received, path)
            except OSError as exc:
                raise Rejected(OUT_OF_RESOURCES,
                               f"cannot write the spool: {exc.strerror}") from exc
            if size is not None:
                break
            if filecmp.cmp(received, path, shallow=False):  # these bytes are stored
                received.unlink()
                holder = self.journal.holder(path)
                if holder is not None:
                    metrics.DUPLICATES.inc()
                    self.journal.note(holder, "duplicate",
                                      f"{sop_uid} received again, the same bytes: stored once")
                    return holder
                size = path.stat().st_size  # but not yet journaled (another association's)
                break
        assert size is not None  # the loop ends with the bytes in place
        try:
            key = self.journal.add_instance(
                study_uid=study_uid, series_uid=series_uid, sop_instance_uid=sop_uid,
                sop_class_uid=sop_class, transfer_syntax=str(syntax),
                path=path, size=size, attrs=instance_attrs)
        except sqlite3.OperationalError as exc:  # full: the resend finds the bytes unjournaled
            raise Rejected(OUT_OF_RESOURCES, f"cannot write the journal: {exc}") from exc
        if path != first:
            metrics.CONFLICTS.inc()
            self.journal.note(key, "conflict", f"{sop_uid} received again with other bytes "
                                               f"than those stored: kept as {path.name}")
        return key


def start_server(config: Config, receiver: Receiver) -> BoundedServer:
    """Listen on the configured address; returns the running server (non-blocking)."""
    node = config.node
    # Accept every proposed storage context, private SOP classes included: a modality's
    # private objects are stored as sent; public UIDs that are not storage classes get 0x0122.
    # pynetdicom keeps this switch per process: the node's process is the node's.
    _config.UNRESTRICTED_STORAGE_SERVICE = True
    # pynetdicom checks the request's UIDs as it decodes it and aborts the association on one
    # over 64 characters; accepted there, `_store` refuses it with a status and a journal row.
    _config.VALIDATORS["UI"] = lambda _: (True, "")
    # Write each dataset to a file in the spool's own folder while its fragments arrive, so
    # that storing it is an fsync and a link (same file system), overlapped with the network.
    _config.STORE_RECV_CHUNKED_DATASET = True
    # pynetdicom has no setting for these files; its module-level name is the one way in.
    dimse_messages.NamedTemporaryFile = receiver.incoming.open  # type: ignore[assignment]
    ae = AE(ae_title=node.ae_titles[0])
    ae.add_supported_context(Verification)
    ae.require_called_aet = False  # several called AE titles: checked in on_requested
    # pynetdicom counts every connection's thread against this, callers known or not, and
    # closing ones: the limits are the edge's (pending) and on_requested's (known callers).
    ae.maximum_associations = 1 << 20
    ae.maximum_pdu_size = node.max_pdu
    ae.network_timeout = node.network_timeout_s
    ae.acse_timeout = node.request_timeout_s
    ae.dimse_timeout = node.network_timeout_s
    limits = Limits(request_timeout=node.request_timeout_s,
                    network_timeout=node.network_timeout_s, max_pdu=node.max_pdu,
                    max_pending=node.max_pending_connections)
    server = ae.make_server(
        (node.bind, node.port), evt_handlers=receiver.handlers(),
        ssl_context=server_tls_context(node.tls) if node.tls is not None else None,
        server_class=BoundedServer, limits=limits, on_end=receiver.on_ended)
    threading.Thread(target=server.serve_forever, name="dicom-accept", daemon=True).start()
    return cast(BoundedServer, server)
