"""The node's DICOMweb port: WADO-RS retrieval of what it received, byte for byte, to a caller
with the token only."""

from __future__ import annotations

import email.parser
import email.policy
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pydicom
import pytest

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


def post(url: str, body: bytes, content_type: str = "application/json",
         token: str | None = TOKEN) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body)
    request.add_header("Content-Type", content_type)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_job_api_takes_only_its_calls_and_keeps_outputs_in_their_folder(
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

    boundary = "b0undary"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n"
            "Content-Location: ../../../escaped.dcm\r\n\r\n").encode() + b"DICM-ish" + \
        f"\r\n--{boundary}--\r\n".encode()
    status, answer = post(f"{api}/studies/{key}/outputs", body,
                          f'multipart/related; type="application/dicom"; boundary={boundary}')
    assert (status, answer) == (200, {"stored": 1})
    [kept] = list((node.data_dir / "outputs").rglob("*.dcm"))
    assert kept.name == "escaped.dcm" and kept.read_bytes() == b"DICM-ish"
    assert not list(tmp_path.glob("escaped*")) and not list(node.data_dir.glob("escaped*"))
    assert post(f"{api}/studies/1.2.3@1/outputs", body,
                f'multipart/related; type="application/dicom"; boundary={boundary}')[0] == 404
