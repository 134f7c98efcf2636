"""Spectral Doppler measurements from an envelope mask and the region calibration.

Definitions (the phantoms' ground truth uses these same functions):
- The envelope is a mask of the spectral region between the baseline and the maximal velocity
  trace of each column. Per column, the trace is the velocity of the OUTER edge of the pixel
  farthest from the baseline (half a pixel beyond its centre: the unbiased estimate of a
  rasterised edge). Aliasing: a column holding a segment attached to the baseline on one side
  and a detached segment on the other is wrapped; the detached part is unwrapped by the span
  of the region (Nyquist range), so its tip is the true peak.
- A beat is a run of columns holding flow, after closing gaps shorter than 30 ms; runs that
  touch the strip's first or last column are incomplete, and runs shorter than 30 % of the
  longest one are specks: neither counts.
- peak velocity: the largest |velocity| over the whole strip (complete beats or not).
- VTI: integral of |velocity| over time of each complete beat, averaged over them (cm).
- E and A (mitral inflow only): per complete beat, the highest peak and the most prominent
  other peak (prominence = height above the lowest point between the two), the earlier being E;
  a beat whose second peak rises less than 10 % of the first above that valley is fused and
  skipped. E and A are averaged over the beats; E/A is the ratio of those averages.
All velocities are reported as magnitudes in cm/s.

A peak outside PEAK_RANGE_CM_S, or a calibration that is missing or not finite, means the
envelope or its scale is wrong: then no value of the strip is reported, and the reason says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from umsrep_core.imaging.regions import SpectralRegion

DOPPLER_TYPES = ("mitral_inflow", "lvot_outflow", "tricuspid_regurgitation", "not_doppler")
_MIN_GAP_S = 0.03
_MIN_BEAT_FRACTION = 0.3
_MIN_PROMINENCE = 0.1
# Physiological peak velocities. Top: by the simplified Bernoulli equation (4 v^2 mmHg) 7 m/s is
# a 196 mmHg gradient, about the most a ventricle generates; the fastest jets of critical aortic
# stenosis are 6-7 m/s and guidelines call >= 5 m/s very severe (Baumgartner et al., EACVI/ASE
# 2017); tricuspid jets rarely pass 5-6 m/s. Bottom: no mitral inflow, LVOT or tricuspid jet
# peaks under 5 cm/s (a mitral A wave, the slowest, is some 20 cm/s at its lowest). A scale off
# by a factor 10 or 100 (mm/s or m/s taken for cm/s) lands outside.
PEAK_RANGE_CM_S = (5.0, 700.0)


@dataclass
class DopplerMeasurements:
    peak_velocity_cm_s: float | None = None
    e_cm_s: float | None = None
    a_cm_s: float | None = None
    e_a_ratio: float | None = None
    vti_cm: float | None = None
    reasons: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"peak_velocity_cm_s": self.peak_velocity_cm_s, "e_cm_s": self.e_cm_s,
                "a_cm_s": self.a_cm_s, "e_a_ratio": self.e_a_ratio, "vti_cm": self.vti_cm,
                "reasons": list(self.reasons)}


def _first_true(mask: np.ndarray) -> np.ndarray:
    first: np.ndarray = mask.argmax(axis=0)
    return first


def _last_true(mask: np.ndarray) -> np.ndarray:
    last: np.ndarray = mask.shape[0] - 1 - mask[::-1].argmax(axis=0)
    return last


def envelope_trace(envelope: np.ndarray, region: SpectralRegion) -> np.ndarray:
    """Signed velocity (cm/s) of the envelope's outer edge per region column; 0 where empty."""
    m = np.asarray(envelope, dtype=bool)[region.y0:region.y1 + 1, region.x0:region.x1 + 1]
    rows, b = m.shape[0], region.ref_y
    above, below = m[:b], m[b + 1:]
    if above.shape[0] == 0:
        above = np.zeros((1, m.shape[1]), bool)
    if below.shape[0] == 0:
        below = np.zeros((1, m.shape[1]), bool)
    has_a, has_b = above.any(axis=0), below.any(axis=0)
    near_a, near_b = above[-1] & (b > 0), below[0] & (b + 1 < rows)
    far_a = _first_true(above)  # outermost row above (region rows)
    far_b = b + 1 + _last_true(below)  # outermost row below
    ext = np.where(has_a & ~has_b, far_a, far_b).astype(float)
    both = has_a & has_b
    # Wrapped: attached above, detached tip below (or the converse); shift by the span.
    wrap_down = both & near_a & ~near_b
    wrap_up = both & near_b & ~near_a
    ext = np.where(wrap_down, b + 1 + _first_true(below) - rows, ext)
    ext = np.where(wrap_up, _last_true(above) + rows, ext)
    # Two attached (or two detached) sides: bidirectional flow, keep the larger excursion.
    other = both & ~wrap_down & ~wrap_up
    ext = np.where(other & (b - far_a > far_b - b), far_a, np.where(other, far_b, ext))
    offset = ext - b
    velocity = (offset + 0.5 * np.sign(offset)) * region.delta_y
    return np.where(has_a | has_b, velocity, 0.0)


def complete_beats(trace: np.ndarray, seconds_per_px: float) -> list[slice]:
    """Column slices of the complete beats of a velocity trace (see the module docstring)."""
    active = np.asarray(trace) != 0
    n = active.size
    edges = np.flatnonzero(np.diff(np.concatenate([[0], active.astype(np.int8), [0]])))
    starts, ends = edges[0::2], edges[1::2]  # ends exclusive
    if starts.size == 0:
        return []
    keep = np.concatenate([[True], (starts[1:] - ends[:-1]) * seconds_per_px >= _MIN_GAP_S])
    starts, ends = starts[keep], np.concatenate([ends[np.flatnonzero(keep)[1:] - 1], ends[-1:]])
    longest = int((ends - starts).max())
    return [slice(int(s), int(e)) for s, e in zip(starts, ends, strict=True)
            if s > 0 and e < n and e - s >= _MIN_BEAT_FRACTION * longest]


def _e_and_a(speed: np.ndarray) -> tuple[float, float] | None:
    """(E, A) of one beat's |velocity|, or None when fused into a single peak."""
    top = int(speed.argmax())
    right = speed[top:]
    right_prom = right - np.minimum.accumulate(right)
    left = speed[:top + 1][::-1]
    left_prom = left - np.minimum.accumulate(left)
    j_r, j_l = int(right_prom.argmax()), int(left_prom.argmax())
    if max(right_prom[j_r], left_prom[j_l]) < _MIN_PROMINENCE * speed[top]:
        return None
    if right_prom[j_r] >= left_prom[j_l]:
        return float(speed[top]), float(right[j_r])
    return float(left[j_l]), float(speed[top])


def measure_trace(trace: np.ndarray, seconds_per_px: float, kind: str) -> DopplerMeasurements:
    """Measurements of a signed velocity trace (cm/s per column, 0 where no flow)."""
    speed = np.abs(np.asarray(trace, dtype=float))
    result = DopplerMeasurements()
    if not speed.any():
        result.reasons.append("empty spectral envelope: nothing measured")
        return result
    result.peak_velocity_cm_s = float(speed.max())
    beats = complete_beats(trace, seconds_per_px)
    if beats:
        result.vti_cm = float(np.mean([speed[b].sum() * seconds_per_px for b in beats]))
    else:
        result.reasons.append("no complete beat in the strip: VTI not measured")
    if kind != "mitral_inflow":
        result.reasons.append("E and A are measured on mitral inflow only")
        return result
    pairs = [p for p in (_e_and_a(speed[b]) for b in beats) if p is not None]
    if not pairs:
        result.reasons.append("no beat with separate E and A waves: E/A not measured")
        return result
    e, a = (float(v) for v in np.mean(pairs, axis=0))
    result.e_cm_s, result.a_cm_s, result.e_a_ratio = e, a, e / a
    return result


def measure_doppler(envelope: np.ndarray, region: SpectralRegion | None, kind: str
                    ) -> DopplerMeasurements:
    """Peak velocity, E, A, E/A and VTI from an envelope mask; None with a reason if unmeasurable.

    `kind` is one of DOPPLER_TYPES (as classified); E and A exist for mitral inflow only.
    """
    if kind not in DOPPLER_TYPES:
        raise ValueError(f"kind must be one of {DOPPLER_TYPES}, not {kind!r}")
    if kind == "not_doppler":
        return DopplerMeasurements(reasons=["not a spectral Doppler image: nothing measured"])
    if region is None:
        return DopplerMeasurements(reasons=["no spectral Doppler region calibration: "
                                            "nothing measured"])
    shape = np.shape(envelope)
    if (len(shape) != 2 or region.y1 >= shape[0] or region.x1 >= shape[1]
            or not 0 <= region.ref_y <= region.y1 - region.y0):
        return DopplerMeasurements(reasons=["the spectral region lies outside the image or its "
                                            "baseline outside the region: nothing measured"])
    finite = math.isfinite(region.delta_x) and math.isfinite(region.delta_y)
    if not finite or region.delta_x <= 0 or region.delta_y == 0:
        return DopplerMeasurements(reasons=["the spectral region has no time or velocity "
                                            "scale: nothing measured"])
    result = measure_trace(envelope_trace(envelope, region), region.delta_x, kind)
    peak, (low, high) = result.peak_velocity_cm_s, PEAK_RANGE_CM_S
    if peak is not None and not low <= peak <= high:
        return DopplerMeasurements(reasons=[
            f"peak velocity {peak:.0f} cm/s is outside the physiological range "
            f"{low:.0f}-{high:.0f} cm/s (is the envelope or the velocity scale wrong?): "
            "nothing measured"])
    return result
