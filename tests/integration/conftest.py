"""Peers for the sender and outbox tests: an in-process pynetdicom SCP, dcmtk's storescp,
small sample files in several transfer syntaxes, and a throwaway TLS PKI."""

from __future__ import annotations

import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pydicom
import pytest
import yaml
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pacs_node import samples
from pacs_node.config import Config
from pacs_node.node import Node
from tests.conftest import free_port, wait_for_port, wait_until

STORESCP = "/usr/bin/storescp"  # dcmtk's, not pynetdicom's script of the same name


@dataclass
class Received:
    sop_instance_uid: str
    transfer_syntax: str
    data: bytes  # the dataset as it came over the wire


@dataclass
class Scp:
    port: int
    received: list[Received] = field(default_factory=list)
    associations: int = 0


@pytest.fixture
def scp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Scp]]:
    """scp(ae_title=, transfer_syntaxes=, status=, port=, ssl_context=, on_store=) -> Scp.

    Accepts every storage SOP class; `status(n)` gives the n-th C-STORE's status (from 0).
    Negotiates and receives as a plain pynetdicom SCP even where an in-process node set the
    process's storage switches (unrestricted contexts, datasets received into files).
    """
    monkeypatch.setattr(_config, "UNRESTRICTED_STORAGE_SERVICE", False)
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", False)
    servers: list[Any] = []

    def start(*, ae_title: str = "ANY-SCP", require_called_aet: bool = False,
              transfer_syntaxes: list[str] = ALL_TRANSFER_SYNTAXES,
              status: Callable[[int], int] = lambda n: 0x0000, port: int = 0,
              ssl_context: Any = None, on_store: Callable[[Event, int], None] | None = None
              ) -> Scp:
        ae = AE(ae_title=ae_title)
        ae.require_called_aet = require_called_aet
        ae.add_supported_context(Verification)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(str(cx.abstract_syntax), transfer_syntaxes)
        lock = threading.Lock()
        peer = Scp(port)

        def on_c_store(event: Event) -> int:
            request = cast(C_STORE, event.request)
            assert request.DataSet is not None
            with lock:
                n = len(peer.received)
                peer.received.append(Received(str(request.AffectedSOPInstanceUID),
                                              str(event.context.transfer_syntax),
                                              request.DataSet.getvalue()))
            if on_store is not None:
                on_store(event, n)
            return status(n)

        def on_established(event: Event) -> None:
            with lock:
                peer.associations += 1

        server = ae.start_server(("127.0.0.1", port), block=False, ssl_context=ssl_context,
                                 evt_handlers=[(evt.EVT_C_STORE, on_c_store),
                                               (evt.EVT_ESTABLISHED, on_established)])
        assert server is not None  # non-blocking: the running server
        servers.append(server)
        peer.port = server.server_address[1]
        return peer

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@dataclass
class StoreScp:
    port: int
    out: Path
    proc: subprocess.Popen[bytes]

    def stored(self) -> dict[str, Dataset]:
        """SOP Instance UID -> dataset of each file storescp wrote."""
        return {str(ds.SOPInstanceUID): ds for ds in map(written_dataset, self.out.iterdir())}


def written_dataset(path: Path, timeout: float = 10.0) -> Dataset:
    """The file storescp wrote at `path`, read again until it parses with its UID: storescp
    writes in place, so a file can be caught half written (raises once `timeout` passes)."""
    try:
        found: Dataset = wait_until(lambda: _whole_dataset(path), timeout=timeout,
                                    interval=0.05)
    except TimeoutError:
        raise AssertionError(f"{path}: not a whole DICOM file after {timeout} s") from None
    return found


def _whole_dataset(path: Path) -> Dataset | None:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, EOFError, struct.error):  # cut off mid-element
        return None
    return ds if "SOPInstanceUID" in ds else None


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[Callable[..., StoreScp]]:
    """storescp(port=None) -> StoreScp: dcmtk's SCP accepting all its transfer syntaxes."""
    peers: list[StoreScp] = []

    def start(port: int | None = None) -> StoreScp:
        port = port or free_port()
        out = tmp_path / f"storescp-{len(peers)}"
        out.mkdir()
        proc = subprocess.Popen([STORESCP, "-od", str(out), "+xa", "-aet", "STORESCP",
                                 str(port)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        peers.append(StoreScp(port, out, proc))
        wait_for_port(port, timeout=10, proc=proc)
        return peers[-1]

    yield start
    for peer in peers:
        peer.proc.terminate()
        peer.proc.wait(timeout=10)


def dataset_bytes(path: Path) -> bytes:
    """The bytes after the file meta: what goes over the wire."""
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    return path.read_bytes()[132 + 12 + meta.FileMetaInformationGroupLength:]


@pytest.fixture
def mixed_files(tmp_path: Path) -> list[Path]:
    """CR and CT, 64 x 64: explicit VR, implicit VR, RLE and JPEG-LS lossless."""
    out = tmp_path / "mixed"
    explicit = samples.cr_dataset(1, rows=64, columns=64)
    implicit = samples.ct_dataset(2, rows=64, columns=64)
    implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    rle = samples.cr_dataset(3, rows=64, columns=64)
    rle.compress(RLELossless)
    jpeg_ls = samples.ct_dataset(4, rows=64, columns=64)
    jpeg_ls.compress(JPEGLSLossless)
    return [samples.write(ds, out / f"{name}.dcm") for name, ds in
            [("cr-explicit", explicit), ("ct-implicit", implicit), ("cr-rle", rle),
             ("ct-jpeg-ls", jpeg_ls)]]


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _key_and_cert(cwd: Path, name: str, ca: str, san: str) -> None:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=cwd)
    (cwd / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-out", f"{name}.pem",
             "-extfile", f"{name}.ext", cwd=cwd)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca.pem with server.{pem,key} (localhost, 127.0.0.1) and client.{pem,key}; rogue.{pem,key}
    is a client certificate from another CA (rogue-ca)."""
    cwd = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "rogue-ca"):
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
                 "-subj", f"/CN=umsrep test {ca}", cwd=cwd)
    _key_and_cert(cwd, "server", "ca", "DNS:localhost,IP:127.0.0.1")
    _key_and_cert(cwd, "client", "ca", "DNS:client")
    _key_and_cert(cwd, "rogue", "rogue-ca", "DNS:rogue")
    return cwd


SETTLED = ("done", "failed", "skipped", "ignored")


def in_process_node(raw: dict[str, Any], handler: Any = None) -> Node:
    """An in-process node (not started) of the configuration `raw` as its YAML file would
    give it: paths as strings, as an admin writes them."""
    return Node(Config.model_validate(yaml.safe_load(yaml.safe_dump(raw))), handler=handler)


def settled(node: Any, count: int) -> list[Any]:
    """The studies of an in-process `pacs_node.node.Node` once `count` of them have settled
    and its outbox has nothing pending; [] until then (for wait_until)."""
    studies = node.journal.studies()
    done = len(studies) == count and all(s.state in SETTLED for s in studies)
    outbox_idle = all(o["state"] != "pending" for o in node.journal.outbox())
    return studies if done and outbox_idle else []
