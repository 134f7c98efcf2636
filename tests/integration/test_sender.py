"""The C-STORE / C-ECHO SCU against real peers: pynetdicom in-process and dcmtk's storescp."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AllStoragePresentationContexts

from pacs_node.config import TLS
from pacs_node.sender import (
    MAX_CONTEXTS,
    SUCCESS,
    WARNING_COERCION,
    echo,
    expand,
    send_files,
    server_tls_context,
)
from tests.conftest import free_port
from tests.integration.conftest import dataset_bytes, sop_uid, written_dataset
from umsrep_core.errors import DeliveryError

pytestmark = pytest.mark.integration

OUT_OF_RESOURCES = 0xA700


def test_files_arrive_unchanged_at_a_pynetdicom_scp(scp: Any, mixed_files: list[Path]) -> None:
    peer = scp()
    results = send_files("127.0.0.1", peer.port, mixed_files)
    assert [(r.path, r.ok, r.status) for r in results] == [(p, True, SUCCESS)
                                                            for p in mixed_files]
    assert peer.associations == 1
    by_uid = {r.sop_instance_uid: r for r in peer.received}
    for path in mixed_files:
        received = by_uid[sop_uid(path)]
        # Streamed in the file's own transfer syntax: the bytes are the file's.
        assert received.transfer_syntax == pydicom.dcmread(path).file_meta.TransferSyntaxUID
        assert received.data == dataset_bytes(path)


def test_storescp_stores_every_file_with_its_uid(storescp: Any,
                                                  mixed_files: list[Path]) -> None:
    peer = storescp()
    results = send_files("127.0.0.1", peer.port, mixed_files, called_ae="STORESCP")
    assert all(r.ok for r in results), results
    stored = peer.stored()
    assert set(stored) == {sop_uid(p) for p in mixed_files}
    for path in mixed_files:
        ts = pydicom.dcmread(path).file_meta.TransferSyntaxUID
        assert stored[sop_uid(path)].file_meta.TransferSyntaxUID == ts


def test_a_file_caught_half_written_is_read_again_until_whole(
        mixed_files: list[Path], tmp_path: Path) -> None:
    whole = mixed_files[0].read_bytes()
    path = tmp_path / "incoming.dcm"
    path.write_bytes(whole[:100])  # storescp writes in place: a reader can catch this
    finish = threading.Timer(0.3, path.write_bytes, [whole])
    finish.start()
    assert str(written_dataset(path).SOPInstanceUID) == sop_uid(mixed_files[0])
    finish.join()
    path.write_bytes(whole[:100])
    with pytest.raises(AssertionError, match="not a whole DICOM file"):
        written_dataset(path, timeout=0.2)


def test_echo_both_peers(scp: Any, storescp: Any) -> None:
    assert echo("127.0.0.1", scp().port) == SUCCESS
    assert echo("127.0.0.1", storescp().port, called_ae="STORESCP") == SUCCESS


def test_unreachable_peer_raises(mixed_files: list[Path]) -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(DeliveryError, match=rf"PACS@127\.0\.0\.1:{port}.*connection failed"):
        send_files("127.0.0.1", port, mixed_files, called_ae="PACS", timeout=5)
    with pytest.raises(DeliveryError, match="connection failed"):
        echo("127.0.0.1", port, timeout=5)


def test_rejected_association_raises(scp: Any, mixed_files: list[Path]) -> None:
    peer = scp(ae_title="PACS", require_called_aet=True)
    with pytest.raises(DeliveryError, match=r"rejected.*Called AE title not recognised"):
        send_files("127.0.0.1", peer.port, mixed_files, called_ae="NOT-PACS")
    assert not peer.received


def test_per_file_statuses_in_order(scp: Any, mixed_files: list[Path], tmp_path: Path) -> None:
    statuses = [WARNING_COERCION, OUT_OF_RESOURCES, SUCCESS]
    peer = scp(status=lambda n: statuses[n])
    not_dicom = tmp_path / "notes.txt"
    not_dicom.write_text("not DICOM")
    paths = [mixed_files[0], not_dicom, mixed_files[1], mixed_files[2]]
    results = send_files("127.0.0.1", peer.port, paths)
    assert [r.path for r in results] == paths
    assert [(r.ok, r.status) for r in results] == [
        (True, WARNING_COERCION), (False, None), (False, OUT_OF_RESOURCES), (True, SUCCESS)]
    assert "not a readable DICOM file" in (results[1].error or "")
    assert "0xA700" in (results[2].error or "")


def test_implicit_only_peer_gets_converted_files_but_no_compressed_ones(
        scp: Any, mixed_files: list[Path]) -> None:
    peer = scp(transfer_syntaxes=[ImplicitVRLittleEndian])
    results = send_files("127.0.0.1", peer.port, mixed_files)
    assert [r.ok for r in results] == [True, True, False, False]
    assert "accepted no context" in (results[2].error or "")
    assert [r.sop_instance_uid for r in peer.received] == [sop_uid(p) for p in mixed_files[:2]]
    assert {r.transfer_syntax for r in peer.received} == {ImplicitVRLittleEndian}


def _tiny(sop_class: str, path: Path) -> Path:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def test_more_contexts_than_one_association_holds_are_split(scp: Any, tmp_path: Path) -> None:
    # Each explicit VR file needs two contexts (its own and the implicit fallback).
    classes = [cx.abstract_syntax for cx in AllStoragePresentationContexts]
    count = MAX_CONTEXTS // 2 + 6
    files = [_tiny(str(cls), tmp_path / f"{i:03d}.dcm") for i, cls in enumerate(classes[:count])]
    peer = scp()
    results = send_files("127.0.0.1", peer.port, files)
    assert all(r.ok for r in results)
    assert peer.associations == 2
    assert sorted(r.sop_instance_uid for r in peer.received) == sorted(map(sop_uid, files))


def test_mutual_tls(scp: Any, pki: Path, mixed_files: list[Path]) -> None:
    server = TLS(cert=pki / "server.pem", key=pki / "server.key", ca=pki / "ca.pem")
    peer = scp(ssl_context=server_tls_context(server))
    client = TLS(cert=pki / "client.pem", key=pki / "client.key", ca=pki / "ca.pem")
    assert echo("localhost", peer.port, tls=client) == SUCCESS
    assert all(r.ok for r in send_files("127.0.0.1", peer.port, mixed_files, tls=client))

    rogue = TLS(cert=pki / "rogue.pem", key=pki / "rogue.key", ca=pki / "ca.pem")
    with pytest.raises(DeliveryError, match="aborted"):
        echo("localhost", peer.port, tls=rogue, timeout=5)
    assert len(peer.received) == len(mixed_files)


def test_expand_recurses_sorted_and_skips_non_dicom(mixed_files: list[Path],
                                                   tmp_path: Path) -> None:
    folder = mixed_files[0].parent
    (folder / "sub").mkdir()
    nested = (folder / "sub" / "a.dcm")
    nested.write_bytes(mixed_files[0].read_bytes())
    (folder / "README").write_text("not DICOM")
    files, skipped = expand([folder, mixed_files[1]])
    assert files == [*sorted(mixed_files), nested, mixed_files[1]]
    assert skipped == [folder / "README"]
