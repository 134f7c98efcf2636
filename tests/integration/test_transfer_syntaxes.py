"""The SCP accepts the transfer syntaxes PACS send, and stores each byte for byte."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from pacs_node import samples
from pacs_node.sender import send_files
from tests.integration.test_receive import dataset_bytes, journal_rows

pytestmark = pytest.mark.integration

# dcmtk converters, by output transfer syntax.
DCMTK = {
    ImplicitVRLittleEndian: ["/usr/bin/dcmconv", "+ti"],
    ExplicitVRBigEndian: ["/usr/bin/dcmconv", "+tb"],
    DeflatedExplicitVRLittleEndian: ["/usr/bin/dcmconv", "+td"],
    JPEGBaseline8Bit: ["/usr/bin/dcmcjpeg", "+eb"],
    JPEGLosslessSV1: ["/usr/bin/dcmcjpeg", "+e1"],
    JPEGLSLossless: ["/usr/bin/dcmcjpls", "+el"],
    JPEGLSNearLossless: ["/usr/bin/dcmcjpls", "+en"],
    RLELossless: ["/usr/bin/dcmcrle"],
}
# pydicom's encoders (pylibjpeg-openjpeg) where dcmtk has none.
PYDICOM = (JPEG2000Lossless, JPEG2000)


def test_every_transfer_syntax_is_stored_as_received(serve: Any, tmp_path: Path) -> None:
    files = []
    for syntax in [*DCMTK, *PYDICOM]:  # one instance per syntax, each its own SOP UID
        ds = samples.us_doppler_dataset(5, rows=128, columns=160)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = samples.uid("ts", syntax)
        out = tmp_path / f"{syntax.name.replace(' ', '_')}.dcm"
        if syntax in DCMTK:
            source = samples.write(ds, tmp_path / "source.dcm")
            subprocess.run([*DCMTK[syntax], str(source), str(out)], check=True,
                           capture_output=True)
        else:
            ds.compress(syntax, **({"j2k_cr": [5]} if syntax == JPEG2000 else {}))
            samples.write(ds, out)
        files.append(out)
    syntaxes = {pydicom.dcmread(f).file_meta.TransferSyntaxUID for f in files}
    assert syntaxes == set(DCMTK) | set(PYDICOM)

    node = serve()
    results = send_files("127.0.0.1", node.port, files, called_ae="UMSREP")
    assert all(r.ok for r in results), [(r.path.name, r.status, r.error) for r in results]
    rows = journal_rows(node.data_dir, "SELECT sop_instance_uid, transfer_syntax, path "
                                       "FROM instances")
    assert {r[1] for r in rows} == {str(s) for s in syntaxes}
    by_uid = {str(pydicom.dcmread(f).SOPInstanceUID): f for f in files}
    for sop_uid, _, path in rows:
        assert dataset_bytes(Path(path)) == dataset_bytes(by_uid[sop_uid])
