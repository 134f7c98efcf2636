"""Retention: what the node removes from its data directory, and when (`retention` settings).

- The received instances of a study that ended (done, failed, skipped, ignored), once nothing
  of it waits in the outbox, `spool_days` after it ended. The journal keeps the study's rows
  and history, marked purged; WADO-RS and `umsrep reprocess` then say its instances are gone.
- Outputs (under data_dir/outputs) that every destination of theirs has, `outputs_days` after
  they were last sent.

Nothing else is ever removed: a study in between, an item still to send, a result in a folder
destination. The node applies it at start and then every RETENTION_INTERVAL_S, and logs what
it removed. The disk mark (`node.min_free_disk_mb`) refuses C-STOREs before the disk fills,
retention or not.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from pacs_node.config import Retention
from pacs_node.journal import Journal

log = logging.getLogger(__name__)

RETENTION_INTERVAL_S = 3600.0
DAY_S = 86400.0


@dataclass
class Removed:
    studies: int = 0
    instances: int = 0
    outputs: int = 0
    bytes: int = 0


def apply(journal: Journal, retention: Retention, data_dir: Path,
          now: float | None = None) -> Removed:
    """Remove what `retention` says may go; what was removed."""
    now = time.time() if now is None else now
    removed = Removed()
    if retention.spool_days is not None:
        for study in journal.ended_before(now - retention.spool_days * DAY_S):
            paths = [Path(i.path) for i in journal.instances(study.study_key)]
            size = sum(_remove(p) for p in paths)
            journal.purged(study.study_key, f"retention: {len(paths)} received instances "
                                            f"removed ({size / 1e6:.1f} MB), "
                                            f"{retention.spool_days:g} days after it ended")
            removed.studies += 1
            removed.instances += len(paths)
            removed.bytes += size
    if retention.outputs_days is not None:
        outputs = (data_dir / "outputs").resolve()
        for path in map(Path, journal.sent_before(now - retention.outputs_days * DAY_S)):
            if path.resolve().is_relative_to(outputs) and path.exists():
                removed.bytes += _remove(path)
                removed.outputs += 1
    if removed.studies or removed.outputs:
        log.info("retention: removed %d received instances of %d studies and %d outputs "
                 "(%.1f MB)", removed.instances, removed.studies, removed.outputs,
                 removed.bytes / 1e6)
    return removed


def _remove(path: Path) -> int:
    """The file's size, once removed (0 if it was gone already)."""
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return 0
    return size
