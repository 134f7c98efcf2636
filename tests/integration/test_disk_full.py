"""A full disk while receiving (issue 22 part 3), on a small tmpfs of its own: the dataset that
does not fit is answered Out of Resources in its association, its partial file goes at once,
the log says so once, and the node stores again as soon as there is room."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import ComputedRadiographyImageStorage

from tests.conftest import node_config
from tests.integration.test_receive import journal_rows

pytestmark = pytest.mark.integration

DISK_MB = 48


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs",
                              str(disk)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "--lazy", str(disk)], check=True)  # the node may still hold it


def test_a_dataset_larger_than_the_free_space(serve: Any, study_files: Any,
                                              small_disk: Path, fault_table: Any) -> None:
    # min_free_disk_mb 0: the disk's own end is the limit
    node = serve(node_config(small_disk / "data", 0), data_dir=small_disk / "data")
    big = study_files("cr", seed=1, rows=4096, columns=2048)[0]  # 16 MB
    small = study_files("cr", seed=2)
    filler = small_disk / "filler"
    filler.write_bytes(bytes((DISK_MB - 12) << 20))  # about 10 MB left
    incoming = node.data_dir / "spool" / ".incoming"

    ae = AE(ae_title="FULLDISK")
    ae.add_requested_context(ComputedRadiographyImageStorage)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="UMSREP")
    assert assoc.is_established
    try:
        assert assoc.send_c_store(big).Status == 0xA700  # in the association, not an abort
        assert not any(incoming.iterdir())  # its partial file went at once
        assert assoc.send_c_store(small[0]).Status == 0x0000  # the same association goes on
    finally:
        assoc.release()
    filler.unlink()  # room again: the big one is stored
    freed = time.monotonic()
    assoc = ae.associate("127.0.0.1", node.port, ae_title="UMSREP")
    try:
        assert assoc.send_c_store(big).Status == 0x0000
    finally:
        assoc.release()
    recovered = time.monotonic() - freed

    assert node.log().count("receiving a dataset stopped") == 1
    assert "Traceback" not in node.log()
    rejections = journal_rows(node.data_dir, "SELECT status, reason FROM rejections")
    assert [status for status, _ in rejections] == [0xA700]
    assert rejections[0][1].startswith("disk full")
    assert len(journal_rows(node.data_dir, "SELECT * FROM instances")) == 2
    fault_table(f"a 16 MB dataset with about 10 MB free ({DISK_MB} MB tmpfs)", "Out of "
                "Resources (A700) in its association, the partial file deleted at once, one "
                "log line; the association and the node go on", partial_files_left=0,
                stored_again_after_room_returned=f"{recovered:.2f} s")
