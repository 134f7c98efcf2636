"""Chest X-ray measurements from masks: cardiothoracic ratio and structure areas.

CTR = maximal horizontal heart width / maximal internal thoracic width, both in image columns
(so the ratio needs no pixel spacing and is the same with anisotropic pixels):
- heart width: columns spanned by the heart mask (max col - min col + 1), i.e. the classical
  sum of the maximal right and left distances of the heart borders from the midline;
- thoracic width: over the rows holding pixels of both lungs, the widest span from the outer
  border of one lung to the outer border of the other (max col - min col + 1 of their union).
The phantoms compute their ground-truth CTR with this very function.

Plausibility, with bounds broad enough never to reject a real chest (the 200 SCR reference
masks of JSRT, `tests/unit/test_chest_plausibility.py`, pass them all with room to spare):
- `not_a_frontal_chest`: whether the masks can be a frontal chest's at all; an image that
  fails is one the model does not know, and nothing of it should be reported;
- `measure_chest`: a CTR or an area outside physiological ranges is not reported, with why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from umsrep_core.imaging.morphology import connected_runs

STRUCTURES = ("right_lung", "left_lung", "heart")

# CTR: normal adults about 0.39-0.50 on a PA film (0.5, Danzer's 1919 limit, is the usual
# upper bound of normal; up to about 0.6 for neonates and AP films); gross cardiomegaly or a
# pericardial effusion reach 0.7-0.8. SCR reference masks: 0.35-0.63. The bounds leave room
# beyond both ends (a small heart in hyperinflated lungs; the largest hearts).
CTR_RANGE = (0.25, 0.85)
# Areas in mm2, at the detector (magnified 1.1x on a PA film, up to 1.3x on an AP one): a
# preterm neonate's lung is some 5-10 cm2 and its heart some 3-5 cm2; SCR's adults at 0.35 mm
# have lungs of 88-321 cm2 and hearts of 74-183 cm2, and the largest adult lungs or an
# enlarged heart on an AP film stay under 800 cm2. A value outside means a wrong pixel
# spacing (off by a factor 10 it is off by 100 in area), not a patient.
AREA_RANGES_MM2 = {"right_lung": (300.0, 80_000.0), "left_lung": (300.0, 80_000.0),
                   "heart": (200.0, 80_000.0)}

# Masks of a frontal chest, as shares of the image (SCR: lungs 0.07-0.25 each, heart
# 0.06-0.14): a child on a large detector is small, a tight collimation large.
IMAGE_SHARES = {"right_lung": (0.01, 0.45), "left_lung": (0.01, 0.45), "heart": (0.002, 0.3)}
ONE_PIECE = 0.7  # share of a mask in its largest connected part (SCR: 1.0): not in patches
HEART_ON_LUNGS = 0.5  # most share of the heart lying on lung masks (SCR: at most 0.02)
HEART_IN_THORAX = 0.8  # least share of the heart between the lungs' outer borders (SCR: 1.0)
LABEL_GRID = 256  # connected parts are found on masks pooled to at most this many pixels a side
CHECK_GRID = 512  # masks checked on every k-th pixel, at most this many a side (2k: 13 ms, not 120)


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


def not_a_frontal_chest(masks: dict[str, np.ndarray]) -> str | None:
    """Why these masks are not those of a frontal chest radiograph, or None when they may be.

    Sides are the patient's: the right lung on the image's left. The first failed check is
    the reason; each threshold above is broad (see the module docstring).
    """
    missing = [name for name in STRUCTURES if name not in masks]
    if missing:
        return f"no {', '.join(missing)} mask"
    step = max(1, -(-max(np.shape(masks["heart"])) // CHECK_GRID))
    bools = {name: np.asarray(masks[name], dtype=bool)[::step, ::step] for name in STRUCTURES}
    for name, (low, high) in IMAGE_SHARES.items():
        share = float(bools[name].mean())
        if not low <= share <= high:
            return (f"the {_words(name)} covers {share:.1%} of the image "
                    f"(plausible: {low:.1%}-{high:.0%})")
        piece = largest_part_share(bools[name])
        if piece < ONE_PIECE:
            return f"the {_words(name)} is in pieces (the largest holds {piece:.0%} of it)"
    right, left, heart = (bools[name] for name in STRUCTURES)
    col = {name: float(np.nonzero(bools[name])[1].mean()) for name in STRUCTURES}
    if col["right_lung"] >= col["left_lung"]:
        return "the lungs are on the wrong sides (the right lung belongs on the image's left)"
    if not col["right_lung"] < col["heart"] < col["left_lung"]:
        return "the heart's centre is not between the lungs"
    heart_rows = heart.any(axis=1)
    for lung in ("right_lung", "left_lung"):
        if not (heart_rows & bools[lung].any(axis=1)).any():
            return f"the heart shares no row with the {_words(lung)}"
    on_lungs = float((heart & (right | left)).sum() / heart.sum())
    if on_lungs > HEART_ON_LUNGS:
        return f"{on_lungs:.0%} of the heart lies on the lungs, not between them"
    lung_cols = np.flatnonzero((right | left).any(axis=0))
    heart_cols = np.nonzero(heart)[1]
    inside = float(((heart_cols >= lung_cols[0]) & (heart_cols <= lung_cols[-1])).mean())
    if inside < HEART_IN_THORAX:
        return f"{1 - inside:.0%} of the heart lies outside the thorax (beyond the lungs)"
    return None


def largest_part_share(mask: np.ndarray) -> float:
    """The share of a mask's pixels in its largest 8-connected part (0.0 for an empty mask).

    Found on square cells, at most LABEL_GRID a side, that the mask fills more than half:
    speckle finer than a cell is no part at all, and gaps narrower than one do not split one.
    """
    counts, cell_area = _pooled_counts(np.asarray(mask, dtype=bool))
    rows, starts, ends, pieces = connected_runs(2 * counts > cell_area)
    if rows.size == 0:
        return 0.0
    summed = np.pad(np.cumsum(counts, axis=1), ((0, 0), (1, 0)))
    pixels = summed[rows, ends] - summed[rows, starts]  # each run's pixels of the mask
    return float(np.bincount(pieces, weights=pixels).max() / counts.sum())


def _pooled_counts(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Pixel counts of the mask in square cells, at most LABEL_GRID cells a side, and the
    cells' area in pixels."""
    cell = max(1, -(-max(mask.shape) // LABEL_GRID))
    h, w = (-(-n // cell) * cell for n in mask.shape)
    padded = np.zeros((h, w), dtype=np.int64)
    padded[:mask.shape[0], :mask.shape[1]] = mask
    pooled: np.ndarray = padded.reshape(h // cell, cell, w // cell, cell).sum(axis=(1, 3))
    return pooled, cell * cell


def _words(name: str) -> str:
    return name.replace("_", " ")


def measure_chest(masks: dict[str, np.ndarray],
                  pixel_spacing_mm: float | tuple[float, float] | None) -> ChestMeasurements:
    """CTR and areas (mm2) of right_lung, left_lung, heart; None with a reason where unmeasurable
    or outside the physiological ranges (CTR_RANGE, AREA_RANGES_MM2).

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
    for name, (low, high) in AREA_RANGES_MM2.items():
        area = areas[name]
        if area is not None and not low <= area <= high:
            reasons.append(f"{_words(name)} area {area:.0f} mm2 is outside the physiological "
                           f"range {low:.0f}-{high:.0f} mm2 (is the pixel spacing right?)")
            areas[name] = None
    ctr: float | None = None
    if not missing:
        ctr, why = cardiothoracic_ratio(bools["right_lung"], bools["left_lung"], bools["heart"])
        if why:
            reasons.append(why)
    else:
        reasons.append("CTR needs both lungs and the heart")
    low, high = CTR_RANGE
    if ctr is not None and not low <= ctr <= high:
        reasons.append(f"CTR {ctr:.3f} from the masks is outside the physiological range "
                       f"{low}-{high}: CTR not reported")
        ctr = None
    return ChestMeasurements(ctr=ctr, areas_mm2=areas, reasons=reasons)
