"""Deterministic output UIDs and timestamps: a study processed twice yields the same objects.

A UID is a name-based (version 5) UUID under `2.25` (PS3.5 B.2) of the source UIDs, the
model version and the output kind. Not pydicom's `generate_uid(prefix=None, entropy_srcs=...)`:
pydicom 3 ignores `entropy_srcs` without a prefix and returns a random UUID.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from pydicom.dataset import Dataset

from workers.outputs.sources import conforms

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:umsrep:outputs")


def output_uid(source_uids: Sequence[str], model_version: str, kind: str, index: int = 0) -> str:
    """The UID of output `kind` (e.g. "seg-series", "seg-instance") number `index`."""
    if not source_uids:
        raise ValueError("output_uid needs at least one source UID")
    if isinstance(source_uids, str):  # a bare string would be split into characters
        raise TypeError("source_uids must be a sequence of UIDs, not one string")
    # A separator that cannot occur in a UID, so ("1", "23") differs from ("12", "3").
    name = "\x1f".join([*source_uids, "model", model_version, "kind", kind, str(index)])
    return f"2.25.{uuid.uuid5(_NAMESPACE, name).int}"


def source_date_time(source: Dataset) -> tuple[str, str]:
    """The date and time our outputs carry as their content date and time: the source's.

    Not the clock: a wall-clock time would make a second run's objects differ from the first's
    (highdicom stamps "now"). The source's content, series or study date stands for when the
    content our outputs describe was acquired.
    """
    for date_kw, time_kw in (("ContentDate", "ContentTime"), ("SeriesDate", "SeriesTime"),
                             ("StudyDate", "StudyTime")):
        date, time = (str(source.get(kw, "") or "") for kw in (date_kw, time_kw))
        if date and conforms("DA", date):  # a non-conformant one ("1970-01-01") is no date
            return date, time if time and conforms("TM", time) else "000000"
    # No date at all (Type 2 attributes sent empty): the clock. The UIDs still repeat, so a
    # second run replaces the first object rather than adding a copy.
    now = datetime.now(UTC)
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def pin_times(ds: Dataset, source: Dataset) -> None:
    """Replace the wall-clock stamps highdicom puts in `ds` with `source_date_time(source)`."""
    date, time = source_date_time(source)
    for date_kw, time_kw in (("InstanceCreationDate", "InstanceCreationTime"),
                             ("ContentDate", "ContentTime"), ("SeriesDate", "SeriesTime"),
                             ("DateOfSecondaryCapture", "TimeOfSecondaryCapture")):
        if date_kw in ds:
            setattr(ds, date_kw, date)
            setattr(ds, time_kw, time)
    for item in ds.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = date + time
