"""Chest X-ray measurements from masks: cardiothoracic ratio and structure areas.

CTR = maximal horizontal heart width / maximal internal thoracic width, both in image columns
(so the ratio needs no pixel spacing and is the same with anisotropic pixels):
- heart width: columns spanned by the heart mask (max col - min col + 1), i.e. the classical
  sum of the maximal right and left distances of the heart borders from the midline;
- thoracic width: over the rows holding pixels of both lungs, the widest span from the outer
  border of one lung to the outer border of the other (max col - min col + 1 of their union).
The phantoms compute their ground-truth CTR with this very function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

STRUCTURES = ("right_lung", "left_lung", "heart")


@dataclass
class ChestMeasurements:
    ctr: float | None
    areas_mm2: dict[str, float | None]
    reasons: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"ctr": self.ctr, "areas_mm2": dict(self.areas_mm2), "reasons": list(self.reasons)}


def _spacing(pixel_spacing_mm: float | tuple[float, float] | None, reasons: list[str]
             ) -> tuple[float, float] | None:
    """(row, column) spacing in mm, or None with a reason: never a zero to multiply or divide."""
    if pixel_spacing_mm is None:
        reasons.append("pixel spacing missing: areas in mm2 not measured")
        return None
    pair = ((float(pixel_spacing_mm),) * 2 if isinstance(pixel_spacing_mm, int | float)
            else (float(pixel_spacing_mm[0]), float(pixel_spacing_mm[1])))
    if not all(math.isfinite(s) and s > 0 for s in pair):
        reasons.append(f"pixel spacing {pixel_spacing_mm!r} is zero or invalid: "
                       "areas in mm2 not measured")
        return None
    return pair


def cardiothoracic_ratio(right_lung: np.ndarray, left_lung: np.ndarray, heart: np.ndarray
                         ) -> tuple[float | None, str | None]:
    """(CTR, None) or (None, reason). See the module docstring for the definition."""
    heart_cols = np.flatnonzero(heart.any(axis=0))
    if heart_cols.size == 0:
        return None, "heart mask empty: CTR not measured"
    if not right_lung.any() or not left_lung.any():
        return None, "a lung mask is empty: CTR not measured"
    both = right_lung.any(axis=1) & left_lung.any(axis=1)
    if not both.any():
        return None, "the lung masks share no row: CTR not measured"
    lungs = (right_lung | left_lung)[both]
    first = lungs.argmax(axis=1)
    last = lungs.shape[1] - 1 - lungs[:, ::-1].argmax(axis=1)
    thoracic = int((last - first).max()) + 1
    heart_width = int(heart_cols[-1] - heart_cols[0]) + 1
    return heart_width / thoracic, None


def measure_chest(masks: dict[str, np.ndarray],
                  pixel_spacing_mm: float | tuple[float, float] | None) -> ChestMeasurements:
    """CTR and areas (mm2) of right_lung, left_lung, heart; None with a reason where unmeasurable.

    `pixel_spacing_mm`: one value, or (row, column) spacing as in DICOM PixelSpacing.
    """
    reasons: list[str] = []
    missing = [name for name in STRUCTURES if name not in masks]
    for name in missing:
        reasons.append(f"{name} mask missing")
    shapes = {np.shape(masks[name]) for name in STRUCTURES if name in masks}
    if len(shapes) > 1:
        raise ValueError(f"masks have different shapes: {sorted(shapes)}")
    bools = {name: np.asarray(masks[name], dtype=bool) for name in STRUCTURES if name in masks}
    spacing = _spacing(pixel_spacing_mm, reasons)
    areas: dict[str, float | None] = {
        name: (None if spacing is None or name not in bools
               else float(np.count_nonzero(bools[name])) * spacing[0] * spacing[1])
        for name in STRUCTURES}
    ctr: float | None = None
    if not missing:
        ctr, why = cardiothoracic_ratio(bools["right_lung"], bools["left_lung"], bools["heart"])
        if why:
            reasons.append(why)
    else:
        reasons.append("CTR needs both lungs and the heart")
    return ChestMeasurements(ctr=ctr, areas_mm2=areas, reasons=reasons)
