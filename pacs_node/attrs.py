"""The attributes of a received instance that routing and completion look at.

Extracted once at ingest and kept in the journal, so routing never rereads the spool.
Nothing here identifies the patient.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from umsrep_core.imaging.us import has_spectral_doppler

# The Manufacturer of every object umsrep writes: how the node knows its own outputs when a
# PACS sends them back, so that they are never processed again.
OWN_MANUFACTURER = "umsrep"


@dataclass(frozen=True)
class InstanceAttrs:
    sop_class_uid: str = ""
    modality: str = ""
    body_part: str = ""
    view_position: str = ""
    image_type: tuple[str, ...] = field(default_factory=tuple)
    manufacturer: str = ""
    study_description: str = ""
    series_description: str = ""
    spectral_doppler: bool = False
    calling_ae: str = ""
    called_ae: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InstanceAttrs:
        return cls(**{**data, "image_type": tuple(data.get("image_type", ()))})


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return str(value).strip() if value is not None else ""


def extract(ds: Dataset, calling_ae: str = "", called_ae: str = "") -> InstanceAttrs:
    image_type = ds.get("ImageType", [])
    if isinstance(image_type, str):
        image_type = [image_type]
    return InstanceAttrs(
        sop_class_uid=_text(ds, "SOPClassUID"),
        modality=_text(ds, "Modality"),
        body_part=_text(ds, "BodyPartExamined"),
        view_position=_text(ds, "ViewPosition"),
        image_type=tuple(str(v) for v in image_type or ()),
        manufacturer=_text(ds, "Manufacturer"),
        study_description=_text(ds, "StudyDescription"),
        series_description=_text(ds, "SeriesDescription"),
        spectral_doppler=has_spectral_doppler(ds),
        calling_ae=calling_ae.strip(),
        called_ae=called_ae.strip(),
    )
