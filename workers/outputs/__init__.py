"""DICOM outputs of a processed study, built with highdicom: SEG, TID 1500 SR, derived images.

Pure functions of the source dataset (as received) and the model's results: no Celery, no
network. Every output's UIDs and timestamps derive from its inputs (`uids.py`), so a study
processed twice yields byte-identical objects.

Builders: `seg.build_seg`, `sr.build_sr`, `derived.build_denoised`, and
`derived.build_frame_image` for the frame of a multi-frame source that SEG and SR are built on.
"""

from __future__ import annotations

from pacs_node.attrs import OWN_MANUFACTURER

# Said in every output: the weights are research models.
NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE: a research model, not a medical device"
MANUFACTURER = OWN_MANUFACTURER  # the node recognises our outputs by it
DEVICE_SERIAL_NUMBER = "umsrep"

# Series numbers of our outputs: high, so that they sort after the modality's own series.
SERIES_NUMBER_SEG = 9001
SERIES_NUMBER_SR = 9002
SERIES_NUMBER_DENOISED = 9003
SERIES_NUMBER_FRAMES = 9004  # single-frame copies of multi-frame sources' frames


def description(what: str, model_name: str) -> str:
    """A Series/Content Description (LO, 64 characters) that truncation cannot rob of the
    NOT FOR CLINICAL USE note: the note comes first."""
    return f"NOT FOR CLINICAL USE {what} {model_name}"[:64]
