"""The node's edge under hostile connections (issue 22 part 1): silent and half-sent requests,
PDUs declared over the limit, TLS callers that never shake hands, more connections than slots,
and a stop while peers hold connections open. Raw sockets play the hostile peers."""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import ComputedRadiographyImageStorage, Verification

from pacs_node.config import TLS
from pacs_node.sender import echo
from tests.conftest import ECHOSCU, node_config, wait_until
from tests.integration.test_fuzz import command_set, p_data, store_rq

pytestmark = pytest.mark.integration


def associate_rq(sop_class: str = Verification, calling: str = "EDGE",
                 called: str = "UMSREP") -> bytes:
    """An A-ASSOCIATE-RQ PDU proposing one context (ID 1), explicit VR little endian."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title, primitive.called_ae_title = calling, called
    context = build_context(sop_class, [ExplicitVRLittleEndian])
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    length = MaximumLengthNotification()
    length.maximum_length_received = 16384
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.826.0.1.3680043.10.1"
    primitive.user_information = [length, implementation]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def c_store_pdus(path: Path, max_pdu: int = 16384) -> list[bytes]:
    """The P-DATA-TF PDUs of a C-STORE of the file's dataset on context 1."""
    ds = pydicom.dcmread(path)
    request = C_STORE()
    request.MessageID, request.Priority = 1, 2
    request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    request.DataSet = BytesIO(encode(ds, False, True))
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    pdus = []
    for primitive in message.encode_msg(1, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        pdus.append(bytes(pdu.encode()))
    return pdus


def pdu_header(pdu_type: int, length: int) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, length)


@contextmanager
def connections(port: int, count: int, first_bytes: bytes = b"") -> Iterator[list[socket.socket]]:
    with ExitStack() as stack:
        socks = []
        for _ in range(count):
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), 5))
            sock.sendall(first_bytes)
            socks.append(sock)
        yield socks


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    """Whether the node closes the connection (EOF or reset) within `within` seconds."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def echoscu(port: int, aet: str = "ECHOSCU") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([ECHOSCU, "-aet", aet, "-aec", "UMSREP", "127.0.0.1", str(port)],
                          capture_output=True, timeout=30)


def rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("VmRSS:")))


def edge_node(serve: Any, tmp_path: Path, **node: Any) -> Any:
    config = node_config(tmp_path / "data", 0, node={"request_timeout_s": 2, **node})
    return serve(config)


def test_silent_and_half_sent_requests_take_no_slot_and_are_closed(
        serve: Any, tmp_path: Path, fault_table: Any) -> None:
    node = edge_node(serve, tmp_path, max_associations=2, max_pending_connections=4)
    # A header declaring 1000 bytes, then 2 of them: pynetdicom alone reads on for ever.
    half_sent = pdu_header(0x01, 1000) + b"\x00\x01"
    with connections(node.port, 3) as silent, connections(node.port, 3, half_sent) as half:
        opened = time.monotonic()
        # Six unknown connections, two slots: a caller still gets in, at once.
        assert echoscu(node.port).returncode == 0
        admitted = time.monotonic() - opened
        for sock in silent + half:
            assert closed_by_peer(sock, within=max(0.1, opened + 4 - time.monotonic()))
        closed = time.monotonic() - opened
    log = node.log()
    assert "the association request did not arrive whole in time" in log
    assert "connections have no association yet" in log  # the seventh closed the oldest
    assert node.proc.poll() is None
    fault_table("3 silent connections and 3 half-sent A-ASSOCIATE-RQs (2 association slots, "
                "request timeout 2 s)", "slots only for known callers; each closed at its "
                "request timeout, the oldest at once when one more came",
                connections_held=6, caller_admitted_after=f"{admitted:.2f} s",
                all_closed_after=f"{closed:.1f} s")


def test_pdus_declared_over_the_limit_are_refused_before_they_are_read(
        serve: Any, tmp_path: Path, fault_table: Any) -> None:
    node = edge_node(serve, tmp_path, max_pdu=65536)
    before = rss_kb(node.proc.pid)
    # Before association: a request declaring 4 GiB.
    with connections(node.port, 1, pdu_header(0x01, 0xFFFFFFFF) + b"\x00" * 1024) as (sock,):
        assert closed_by_peer(sock, within=3)
    # After association: P-DATA declaring 128 MB against 64 KiB negotiated, then streaming.
    with connections(node.port, 1, associate_rq()) as (sock,):
        assert sock.recv(1)[0] == 0x02  # A-ASSOCIATE-AC
        sock.sendall(pdu_header(0x04, 128 << 20))
        sent, chunk = 0, b"\x00" * (1 << 20)
        with pytest.raises(OSError):  # the node closes it: broken pipe or reset
            for _ in range(128):
                sock.sendall(chunk)
                sent += len(chunk)
        assert sent < 64 << 20
    grown_kb = rss_kb(node.proc.pid) - before
    assert grown_kb < 32 << 10  # nothing of it was held in memory
    assert node.log().count("bytes, over the") == 2
    assert echoscu(node.port).returncode == 0
    fault_table("a request declaring 4 GiB; a P-DATA PDU declaring 128 MB against 64 KiB "
                "negotiated, then streamed", "both refused from the header (A-ABORT), "
                "nothing read", peer_sent_before_the_close=f"{sent >> 20} MB",
                node_memory_growth=f"{grown_kb >> 10} MB")


def test_known_callers_get_the_slots_and_the_rest_are_told_to_come_back(
        serve: Any, tmp_path: Path, fault_table: Any) -> None:
    node = edge_node(serve, tmp_path, max_associations=1)
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context(Verification)
    holder = ae.associate("127.0.0.1", node.port, ae_title="UMSREP")
    assert holder.is_established
    try:
        second = ae.associate("127.0.0.1", node.port, ae_title="UMSREP")
        assert second.is_rejected
        assert second.acceptor.primitive is not None
        result = second.acceptor.primitive
        assert (result.result, result.result_source, result.diagnostic) == (0x02, 0x03, 0x02)
    finally:
        holder.release()
    assert echoscu(node.port).returncode == 0  # the slot is free from the release on
    assert "associations are open, the most allowed" in node.log()
    fault_table("a second caller while max_associations (1) are open", "rejected for now "
                "(transient, local limit exceeded); admitted as soon as the first released",
                rejection="2/3/2")


def test_tls_handshakes_run_beside_each_other(serve: Any, pki: Path, tmp_path: Path,
                                              fault_table: Any) -> None:
    server = {"cert": str(pki / "server.pem"), "key": str(pki / "server.key"),
              "ca": str(pki / "ca.pem")}
    node = edge_node(serve, tmp_path, tls=server)
    client = TLS(cert=pki / "client.pem", key=pki / "client.key", ca=pki / "ca.pem")
    # One silent TCP connection and one that speaks no TLS: the accept loop goes on.
    with connections(node.port, 1) as (silent,), \
            connections(node.port, 1, b"GET / HTTP/1.0\r\n\r\n") as (plain,):
        started = time.monotonic()
        assert echo("127.0.0.1", node.port, called_ae="UMSREP", calling_ae="TLSSCU",
                    tls=client, timeout=5) == 0
        echoed = time.monotonic() - started
        assert echoed < 2  # not after the silent one's timeout
        assert closed_by_peer(plain, within=3)
        assert closed_by_peer(silent, within=4)
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    # The node ends it (refused, reset or EOF) and never reads the request: no certificate.
    with socket.create_connection(("127.0.0.1", node.port), 5) as raw, \
            contextlib.suppress(OSError), \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(associate_rq())
        tls.recv(1)
    # Each failed handshake is logged: no TLS, no certificate, nothing at all.
    assert wait_until(lambda: node.log().count("TLS handshake failed") >= 3, timeout=5)
    fault_table("TLS port: a silent TCP connection, plain bytes, a client without a "
                "certificate", "handshakes in each connection's thread, within the request "
                "timeout; each failure logged", tls_echo_beside_them=f"{echoed:.2f} s",
                failed_handshakes_logged="3 of 3")


def test_sigterm_stops_the_node_within_seconds_whatever_peers_hold(
        serve: Any, tmp_path: Path, fault_table: Any) -> None:
    node = edge_node(serve, tmp_path, request_timeout_s=60, network_timeout_s=600)
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context(Verification)
    holder = ae.associate("127.0.0.1", node.port, ae_title="UMSREP")
    assert holder.is_established
    with connections(node.port, 2, pdu_header(0x01, 1000)), \
            connections(node.port, 1, associate_rq()) as (mid_pdu,):
        assert mid_pdu.recv(1)[0] == 0x02
        mid_pdu.sendall(pdu_header(0x04, 1000) + b"\x00" * 10)  # and the rest never comes
        time.sleep(0.5)
        started = time.monotonic()
        node.proc.terminate()
        node.proc.wait(timeout=15)
        stopped = time.monotonic() - started
        assert stopped < 8
    assert holder.is_aborted or wait_until(lambda: holder.is_aborted, timeout=5)
    fault_table("SIGTERM while peers hold an idle association, 2 half-sent requests and a "
                "half-sent P-DATA (timeouts 60 s / 600 s)", "every connection closed, "
                "stopped", stopped_after=f"{stopped:.1f} s")


def test_transfers_cut_off_leave_no_partial_file(serve: Any, study_files: Any,
                                                 tmp_path: Path, fault_table: Any) -> None:
    node = edge_node(serve, tmp_path)
    incoming = node.data_dir / "spool" / ".incoming"
    pdus = c_store_pdus(study_files("cr", rows=1024, columns=1024)[0])
    slowest = 0.0
    for cut in (2, len(pdus) // 2, len(pdus) - 1):  # the sender dies part-way, three times
        with connections(node.port, 1, associate_rq(ComputedRadiographyImageStorage)) as (sock,):
            assert sock.recv(1)[0] == 0x02
            for pdu in pdus[:cut]:
                sock.sendall(pdu)
            assert wait_until(lambda: any(incoming.iterdir()), timeout=5)
        cut_at = time.monotonic()
        # The node deletes the partial dataset when the connection ends, not at its restart.
        assert wait_until(lambda: not any(incoming.iterdir()), timeout=5)
        slowest = max(slowest, time.monotonic() - cut_at)
    assert node.log().count("1 partial datasets deleted") == 3
    assert not list((node.data_dir / "spool").rglob("*.dcm"))
    fault_table("a sender's connection cut mid-dataset, 3 times", "each partial dataset "
                "deleted as its connection closed", partial_files_left=0,
                deleted_within=f"{slowest:.2f} s")


def test_a_message_pynetdicom_cannot_decode_gives_its_slot_back(serve: Any, tmp_path: Path,
                                                                 fault_table: Any) -> None:
    """pynetdicom's reader dies on it without a connection-closed event: the slot was never
    given back, and 16 such requests stopped the node (found by test_fuzz)."""
    node = edge_node(serve, tmp_path, max_associations=2)
    undecodable = p_data([(1, 3, command_set(store_rq("")))])  # AffectedSOPInstanceUID empty
    for _ in range(6):
        with connections(node.port, 1, associate_rq(ComputedRadiographyImageStorage)) as (sock,):
            assert sock.recv(1)[0] == 0x02
            sock.sendall(undecodable)
            assert closed_by_peer(sock, within=3)
    ae = AE(ae_title="AFTER")
    ae.add_requested_context(Verification)
    assocs = [ae.associate("127.0.0.1", node.port, ae_title="UMSREP") for _ in range(2)]
    try:
        free = sum(a.is_established for a in assocs)
    finally:
        for assoc in assocs:
            if assoc.is_established:
                assoc.release()
    assert free == 2
    assert not any((node.data_dir / "spool" / ".incoming").iterdir())
    fault_table("6 C-STOREs whose command pynetdicom cannot decode (an empty UID), 2 slots",
                "each association ended, its slot given back", slots_free="2 of 2",
                partial_files_left=0)
