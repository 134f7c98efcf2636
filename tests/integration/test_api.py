"""The node's HTTP port: WADO-RS retrieval of what it received, byte for byte, STOW-RS of what
workers make of it, and the job API, to a caller with the token only."""

from __future__ import annotations

import email.parser
import email.policy
import io
import json
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pydicom
import pytest

from pacs_node.api import ApiServer
from pacs_node.config import Api
from pacs_node.journal import Journal, Study
from tests.conftest import free_port, node_config, storescu, wait_until
from tests.integration.test_receive import dataset_bytes, journal_rows

pytestmark = pytest.mark.integration

TOKEN = "a-token-of-the-test-0123456789"


def get(url: str, token: str | None = TOKEN) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def parts(content_type: str, body: bytes) -> list[bytes]:
    """The parts of a multipart/related body, read by the standard library's MIME parser."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    assert message.get_content_type() == "multipart/related"
    assert message.get_param("type") == "application/dicom"
    return [part.get_payload(decode=True) for part in message.iter_parts()
            if part.get_content_type() == "application/dicom"]


def test_wado_rs_gives_back_what_was_received(serve: Any, study_files: Any,
                                              tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    node = serve(node_config(tmp_path / "data", 0, routing={"quiet_seconds": 0.5},
                             api={"port": port, "token_file": str(token_file)}))
    files = study_files("cr", count=3, rows=64, columns=64)
    assert storescu(node.port, files).returncode == 0
    wait_until(lambda: len(journal_rows(node.data_dir, "SELECT * FROM instances")) == 3)
    study = pydicom.dcmread(files[0]).StudyInstanceUID
    base = f"http://127.0.0.1:{port}/dicomweb/studies/{study}"

    status, content_type, body = get(base)
    assert status == 200
    received = parts(content_type, body)
    assert sorted(dataset_bytes_of(p) for p in received) == sorted(
        dataset_bytes(f) for f in files)  # as sent, byte for byte
    spooled = sorted(Path(r[0]).read_bytes() for r in journal_rows(
        node.data_dir, "SELECT path FROM instances"))
    assert sorted(received) == spooled  # the files as the spool holds them

    one = pydicom.dcmread(files[1])
    status, content_type, body = get(f"{base}/series/{one.SeriesInstanceUID}/instances/"
                                     f"{one.SOPInstanceUID}")
    assert status == 200 and [dataset_bytes_of(p) for p in parts(content_type, body)] == [
        dataset_bytes(files[1])]
    assert get(f"{base}?version=1")[0] == 200

    assert get(base, token=None)[0] == 401
    assert get(base, token="not-the-token-0123456789")[0] == 401
    status, _, body = get(f"{base}?version=2")
    assert (status, json.loads(body)) == (404, {"error": "no such instance"})
    assert get(f"{base}?version=two")[0] == 400
    assert get(f"http://127.0.0.1:{port}/dicomweb/studies/1.2.3")[0] == 404


def dataset_bytes_of(part: bytes) -> bytes:
    """A part's bytes after its file meta."""
    meta_length = int.from_bytes(part[140:144], "little")
    return part[132 + 12 + meta_length:]


def call(url: str, method: str = "GET", body: bytes = b"",
         content_type: str = "application/json", token: str | None = TOKEN, *,
         timeout: float = 30) -> tuple[int, Any]:
    """A call of the node's HTTP API that answers JSON: (status, the answer)."""
    request = urllib.request.Request(url, data=body if method == "POST" else None,
                                     method=method)
    if method == "POST":
        request.add_header("Content-Type", content_type)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def post(url: str, body: bytes, content_type: str = "application/json",
         token: str | None = TOKEN) -> tuple[int, Any]:
    return call(url, "POST", body, content_type, token, timeout=10)


def test_the_job_api_takes_only_its_calls(
        serve: Any, study_files: Any, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    port = free_port()
    node = serve(node_config(tmp_path / "data", 0, api={"port": port,
                                                        "token_file": str(token_file)}))
    assert storescu(node.port, study_files("cr", rows=64, columns=64)).returncode == 0
    [(key,)] = wait_until(lambda: journal_rows(node.data_dir, "SELECT study_key FROM studies"))
    api = f"http://127.0.0.1:{port}/api"

    status, answer = post(f"{api}/journal/study", json.dumps({"key": key}).encode())
    assert status == 200 and answer["result"]["study_key"] == key
    assert post(f"{api}/journal/study", b"{}", token=None)[0] == 401
    assert post(f"{api}/journal/set_state", json.dumps({"key": key}).encode()) == (
        404, {"error": "no job call set_state"})  # only what a job calls
    status, answer = post(f"{api}/journal/study", json.dumps({"nope": 1}).encode())
    assert status == 400 and answer["error"].startswith("study: TypeError")



def stow_body(*parts: bytes, boundary: str = "b0undary") -> tuple[bytes, str]:
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                    + part + b"\r\n" for part in parts) + f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def output_of(source: Path, uid: str, **changes: str) -> bytes:
    """A DICOM file of the source's study (an SR in name), as a worker would return."""
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.Modality = "SR"
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # a Modality naming a folder
def test_stow_rs_keeps_a_job_outputs_and_says_which_it_refused(serve: Any, study_files: Any,
                                                                tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    port = free_port()
    node = serve(node_config(tmp_path / "data", 0, api={"port": port,
                                                        "token_file": str(token_file)}))
    [source] = study_files("cr", rows=64, columns=64)
    assert storescu(node.port, [source]).returncode == 0
    [(key,)] = wait_until(lambda: journal_rows(node.data_dir, "SELECT study_key FROM studies"))
    study_uid = str(pydicom.dcmread(source).StudyInstanceUID)
    stow = f"http://127.0.0.1:{port}/dicomweb/studies/{study_uid}"

    body, content_type = stow_body(output_of(source, "1.2.826.0.1.3680043.10.4711.1"))
    status, answer = post(f"{stow}?version=1&destination=results", body, content_type)
    assert status == 200 and "00081198" not in answer
    [stored] = answer["00081199"]["Value"]
    assert stored["00081155"]["Value"] == ["1.2.826.0.1.3680043.10.4711.1"]
    kept = node.data_dir / "outputs" / study_uid / "SR-1.2.826.0.1.3680043.10.4711.1.dcm"
    assert kept.read_bytes() == output_of(source, "1.2.826.0.1.3680043.10.4711.1")
    assert journal_rows(node.data_dir, "SELECT study_key, destination, path FROM outbox") == [
        (key, "results", str(kept))]  # queued to the destination named

    body, content_type = stow_body(
        output_of(source, "1.2.826.0.1.3680043.10.4711.2"),
        b"DICM-ish",  # no DICOM file
        output_of(source, "1.2.826.0.1.3680043.10.4711.3", StudyInstanceUID="1.2.3"),
        output_of(source, "1.2.826.0.1.3680043.10.4711.4", Modality="../../x"))
    status, answer = post(stow, body, content_type)
    assert status == 202  # some stored, some not
    assert len(answer["00081199"]["Value"]) == 1
    assert [item["00081197"]["Value"][0] for item in answer["00081198"]["Value"]] == [
        0xC000, 0xC409, 0xC000]
    assert sorted(p.name for p in (node.data_dir / "outputs").rglob("*")) == [
        study_uid, "SR-1.2.826.0.1.3680043.10.4711.1.dcm",
        "SR-1.2.826.0.1.3680043.10.4711.2.dcm"]  # nothing escaped its folder
    assert not list(tmp_path.rglob("x*.dcm"))

    body, content_type = stow_body(b"DICM-ish")
    assert post(stow, body, content_type)[0] == 409  # none stored
    assert post(f"http://127.0.0.1:{port}/dicomweb/studies/1.2.3", body, content_type)[0] == 404
    assert post(stow, body, "application/json")[0] == 415
    assert post(stow, body, content_type, token=None)[0] == 401


def test_a_slow_job_call_holds_up_no_other_request(tmp_path: Path) -> None:
    """A journal write or a fsync that takes long (a busy disk) is done off the server's one
    loop: while one worker's call waits on it, another's requests are answered."""
    started, release = threading.Event(), threading.Event()

    class SlowJournal(Journal):
        def study(self, key: str) -> Study | None:
            started.set()
            release.wait(30)
            return super().study(key)

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    server = ApiServer(Api(port=0, token_file=token_file),
                       SlowJournal(tmp_path / "journal.db"), tmp_path)
    server.start()
    api = f"http://127.0.0.1:{server.port}/api/journal"
    slow: dict[str, Any] = {}
    caller = threading.Thread(target=lambda: slow.update(answer=post(
        f"{api}/study", json.dumps({"key": "1.2.3@1"}).encode())))
    try:
        caller.start()
        assert started.wait(10)
        # answered while the first call still waits (urllib's timeout is 10 s: it would fail)
        assert post(f"{api}/set_state", b"{}") == (404, {"error": "no job call set_state"})
        assert get(f"http://127.0.0.1:{server.port}/dicomweb/studies/1.2.3",
                   token=None)[0] == 401
        assert "answer" not in slow
    finally:
        release.set()
        caller.join(15)
        server.stop()
    assert slow["answer"] == (200, {"result": None})
