"""The multipart/related reader of the node's API (both ends: WADO-RS answers, STOW-RS
requests): parts split at the boundary, binary bodies intact, preamble and epilogue ignored."""

from __future__ import annotations

import os

import pytest

from pacs_node.api import multipart_related

TYPE = 'multipart/related; type="application/dicom"; boundary=b0und'


def test_parts_come_back_byte_for_byte_with_their_headers() -> None:
    binary = os.urandom(1 << 16) + b"\r\n--b0un\r\n\r\n"  # line ends and a near-boundary inside
    body = (b"a preamble\r\n--b0und  \r\nContent-Type: application/dicom\r\n"
            b"Content-Location: SEG-1.2.dcm\r\n\r\n" + binary +
            b"\r\n--b0und\r\n\r\nno headers\r\n--b0und--\r\nan epilogue\r\n--b0und\r\n\r\nx")
    first, second = multipart_related(TYPE, body)
    assert first.body == binary and first.headers.get("Content-Location") == "SEG-1.2.dcm"
    assert first.headers.get_content_type() == "application/dicom"
    assert second.body == b"no headers" and not second.headers.keys()


@pytest.mark.parametrize("content_type", [
    "application/json", 'multipart/related; type="application/dicom+json"; boundary=b0und',
    'multipart/related; type="application/dicom"'])  # no boundary
def test_another_content_type_is_refused(content_type: str) -> None:
    with pytest.raises(ValueError, match="multipart/related"):
        multipart_related(content_type, b"--b0und--\r\n")
