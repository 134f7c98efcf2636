"""Source images as received, and what our outputs need of them.

Real images are not always conformant; our outputs must be. Here:
- `unusable`: why no valid output can be built on an image (no pixels, UIDs that outputs
  could not validly reference), or None;
- `highdicom_knows`: whether highdicom builds on the image's SOP class (a retired or private
  one gets a Secondary Capture copy to build on: `derived.build_frame_image`);
- `with_type2`: the image with the Type 2 patient and study attributes that highdicom copies
  into every output, present (empty) where the modality left them out.
"""

from __future__ import annotations

import copy

from pydicom.dataset import Dataset
from pydicom.uid import UID

from pacs_node.spool import is_valid_uid

REFERENCED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
# Patient (C.7.1.1) and General Study (C.7.2.1) Type 2 attributes: highdicom reads them
# unconditionally (a Fuji CR of 1995 has no Patient ID), and our outputs carry them as well.
TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")


def unusable(ds: Dataset) -> str | None:
    """Why no valid output can be built on `ds`, or None.

    The node stores what a PACS stores: images without pixel data (character set test
    objects), and images whose UIDs do not conform (hex strings from anonymisers, leading
    zeros), which our outputs would have to repeat, and be invalid.
    """
    if not ds.get("PixelData"):
        return "no pixel data"
    bad = [name for name in REFERENCED_UIDS if not is_valid_uid(str(ds.get(name, "")))]
    if not bad:
        return None
    verb = "is not a valid UID" if len(bad) == 1 else "are not valid UIDs"
    return f"{', '.join(bad)} {verb}: outputs that reference it would be invalid DICOM"


def highdicom_knows(ds: Dataset) -> bool:
    """highdicom builds on images of the current standard's public SOP classes only."""
    sop_class = UID(str(ds.SOPClassUID))
    return not sop_class.is_private and not sop_class.is_retired and bool(sop_class.type)


def with_type2(source: Dataset) -> Dataset:
    """`source`, or a copy of it with its missing `TYPE2_COPIED` attributes empty (a deep
    copy: a pydicom Dataset's shallow copy shares its elements with the original)."""
    missing = [name for name in TYPE2_COPIED if name not in source]
    if not missing:
        return source
    complete = copy.deepcopy(source)
    for name in missing:
        setattr(complete, name, "")
    return complete
