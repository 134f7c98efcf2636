"""Synthetic spectral Doppler strips with exact ground truth (numpy only, deterministic by seed).

An image is an 8-bit screen capture: the spectral region (velocity vertically, time
horizontally) with its baseline, the velocity scale (ticks and labels) on the left, time marks
under it, an ECG trace at the bottom and a header line. Types, in label order: DOPPLER_TYPES.
- mitral_inflow (PW): E and A waves above the baseline, joined by a low diastasis flow;
- lvot_outflow (PW): one systolic jet below the baseline;
- tricuspid_regurgitation (CW): a rounded high-velocity (2.5-5 m/s) jet below the baseline;
- not_doppler: a B-mode sector or an M-mode strip, no spectral content (empty envelope, no
  region).
PW strips alias in some cases: velocities past the edge of the scale wrap around to the other
side, in the image and in the envelope alike (`umsrep_core.measure.doppler` unwraps them).

Ground truth. The velocity of every column is drawn from the waveform model; `envelope` marks
the pixels whose centre velocity lies between 0 and that velocity (the baseline row never).
peak, E, A and E/A are measured on the exact per-column velocities, and VTI on the envelope,
with the functions of `umsrep_core.measure.doppler`, so their definitions agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from umsrep_core.imaging.regions import SpectralRegion
from umsrep_core.measure.doppler import DOPPLER_TYPES, measure_doppler, measure_trace
from umsrep_core.phantoms.font import draw_text

__all__ = ["DOPPLER_TYPES", "DopplerPhantom", "add_speckle", "doppler_batch", "make_doppler"]

F32 = np.float32
Array = np.ndarray
_ALIAS_PROBABILITY = 0.3
_SCALE_STEPS = (10, 20, 25, 50, 100, 200)  # cm/s between labelled ticks


@dataclass(frozen=True, eq=False)
class DopplerPhantom:
    image: Array  # uint8 H x W
    envelope: Array  # bool H x W; empty for not_doppler
    kind: str
    region: SpectralRegion | None
    peak_velocity_cm_s: float | None
    e_cm_s: float | None
    a_cm_s: float | None
    e_a_ratio: float | None
    vti_cm: float | None
    aliased: bool
    clean: Array  # float32 [0, 1], the image before speckle and quantisation
    speckle: Array  # bool H x W, where speckle was added (add_speckle(clean, rng, strength))
    speckle_strength: float


def add_speckle(clean: Array, rng: np.random.Generator, strength: float) -> Array:
    """Ultrasound speckle on a [0, 1] image: multiplicative gamma noise with 1/strength**2 looks,
    slightly correlated in time (overlapping FFT windows), plus an exponential noise floor."""
    looks = float(np.clip(1.0 / max(strength, 1e-3) ** 2, 1.0, 100.0))
    gain = rng.gamma(looks, 1.0 / looks, clean.shape).astype(F32)
    if clean.ndim == 2 and clean.shape[1] > 1:
        gain[:, 1:] = F32(0.5) * (gain[:, 1:] + gain[:, :-1])
    floor = F32(0.1 * strength) * rng.exponential(1.0, clean.shape).astype(F32)
    return np.clip(clean * gain + floor, 0, 1).astype(F32)


def _wave(t: Array, start: float, rise: float, fall: float) -> Array:
    """Raised-cosine pulse of height 1: rising over `rise` s, falling over `fall` s."""
    tau = t - start
    up = np.sin(0.5 * np.pi * np.clip(tau / rise, 0, 1)) ** 2
    down = np.cos(0.5 * np.pi * np.clip((tau - rise) / fall, 0, 1)) ** 2
    return np.where(tau < rise, up, down) * ((tau >= 0) & (tau <= rise + fall))


def _ecg(t: Array, r_times: Array) -> Array:
    """ECG (arbitrary units, R = 1) at times t for the given R-wave times."""
    d = t[None, :] - r_times[:, None]
    waves = ((0.15, -0.16, 0.025), (-0.12, -0.028, 0.009), (1.0, 0.0, 0.01),
             (-0.25, 0.025, 0.01), (0.3, 0.28, 0.05))
    trace: Array = np.zeros(t.shape)
    for amplitude, centre, width in waves:
        trace += amplitude * np.exp(-(((d - centre) / width) ** 2)).sum(axis=0)
    return trace


def _velocity(kind: str, rng: np.random.Generator, t: Array, r_times: Array, rr: float
              ) -> Array:
    """Signed velocity (cm/s) of the flow at times t."""
    v = np.zeros_like(t)
    if kind == "mitral_inflow":
        e, ratio = rng.uniform(50, 100), rng.uniform(0.7, 2.0)
        a = float(np.clip(e / ratio, 25, 110))
        rise, dec = rng.uniform(0.07, 0.1), rng.uniform(0.14, 0.22)
        onset = 0.36 + 0.15 * (rr - 0.75)
        for r in r_times:
            ek, ak = e * rng.normal(1, 0.02), a * rng.normal(1, 0.02)
            e_start, a_start = r + onset, r + rr - 0.16 + rng.uniform(-0.01, 0.01)
            flat = rng.uniform(0.08, 0.16) * min(ek, ak)  # diastasis flow joins E and A
            between = (t >= e_start + rise) & (t <= a_start + 0.07)
            v = np.maximum.reduce([v, ek * _wave(t, e_start, rise, dec),
                                   ak * _wave(t, a_start, 0.07, 0.09), flat * between])
    elif kind == "lvot_outflow":
        peak = rng.uniform(70, 150)
        for r in r_times:
            dur = rng.uniform(0.26, 0.32)
            v = np.minimum(v, -peak * rng.normal(1, 0.02)
                           * _wave(t, r + rng.uniform(0.05, 0.08), 0.35 * dur, 0.65 * dur))
    else:  # tricuspid regurgitation: holosystolic, rounded
        peak = rng.uniform(260, 480)  # beat-to-beat variation keeps it in 2.5-5 m/s
        for r in r_times:
            start, dur = r + rng.uniform(0.0, 0.03), rng.uniform(0.35, 0.45)
            phase = np.clip((t - start) / dur, 0, 1)
            v = np.minimum(v, -peak * rng.normal(1, 0.02) * np.sin(np.pi * phase) ** 0.45)
    return v


@dataclass(frozen=True)
class _Layout:
    h: int
    w: int
    x0: int
    x1: int
    y0: int
    y1: int
    ecg0: int
    ecg1: int
    scale: int  # font scale

    @staticmethod
    def of(h: int, w: int) -> _Layout:
        if h < 64 or w < 128:
            raise ValueError(f"a Doppler strip needs at least 64 x 128 pixels, not {h} x {w}")
        return _Layout(h=h, w=w, x0=max(round(0.085 * w), 12), x1=w - 1 - round(0.015 * w),
                       y0=round(0.05 * h), y1=round(0.76 * h), ecg0=round(0.83 * h),
                       ecg1=round(0.97 * h), scale=max(1, round(h / 256)))


def _draw_ecg(canvas: Array, lay: _Layout, t: Array, r_times: Array, value: float) -> None:
    """The ECG as a connected 1-pixel polyline in its band, under the strip's columns."""
    trace = _ecg(t, r_times)
    height = lay.ecg1 - lay.ecg0
    rows = lay.ecg0 + 0.65 * height - 0.55 * height * trace
    lo = np.minimum(rows, np.concatenate([rows[:1], rows[:-1]])) - 0.5
    hi = np.maximum(rows, np.concatenate([rows[:1], rows[:-1]])) + 0.5
    grid = np.arange(lay.ecg0, lay.ecg1, dtype=float)[:, None]
    band = canvas[lay.ecg0:lay.ecg1, lay.x0:lay.x0 + t.size]
    band[(grid >= lo) & (grid <= hi)] = value


def _draw_frame(canvas: Array, lay: _Layout, region: SpectralRegion, *, unit: str, header: str
                ) -> None:
    """Baseline, velocity scale, time marks and header onto the overlay canvas."""
    b, dy, s = region.baseline_row, region.delta_y, lay.scale
    canvas[b, lay.x0:lay.x1 + 1] = 0.55
    top_v, bottom_v = region.velocity_cm_s(lay.y0), region.velocity_cm_s(lay.y1)
    span = abs(top_v - bottom_v)
    step = next((st for st in _SCALE_STEPS if span / st <= 8), 500)
    for v in range(-20 * step, 20 * step + 1, step):
        row = round(b + v / dy)
        if lay.y0 <= row <= lay.y1:
            canvas[row, lay.x0 - 3 * s:lay.x0] = 0.85
            label = f"{v / 100:g}" if unit == "M/S" else str(v)
            draw_text(canvas, label, row - 2 * s, lay.x0 - 5 * s, scale=s, value=0.85,
                      align="right")
    draw_text(canvas, unit, max(lay.y0 - 6 * s, 0), 1, scale=s, value=0.85)
    for k in range(int((lay.x1 - lay.x0) * region.delta_x / 0.1) + 1):
        col = lay.x0 + round(k * 0.1 / region.delta_x)
        canvas[lay.y1 + 2:lay.y1 + 2 + (3 * s if k % 5 == 0 else s), col] = 0.7
    draw_text(canvas, header, max(lay.y0 - 6 * s, 0), lay.x1, scale=s, value=0.85, align="right")
    canvas[lay.y0 - 1, lay.x0:lay.x1 + 1] = 0.4


@dataclass(frozen=True)
class _Timing:
    t: Array  # seconds at each strip column
    r_times: Array  # R waves, from one beat before the strip to beyond its end
    rr: float  # mean R-R interval (s)

    @staticmethod
    def draw(rng: np.random.Generator, cols: int) -> _Timing:
        dx = rng.uniform(2.2, 3.6) / cols  # 2.2-3.6 s of strip
        rr = 60.0 / rng.uniform(55, 80)
        beats = rr * np.cumsum(rng.normal(1, 0.02, int(cols * dx / rr) + 3))
        return _Timing(t=np.arange(cols) * dx, r_times=beats - rr - rng.uniform(0, rr), rr=rr)


@dataclass(frozen=True)
class _Strip:
    layer: Array  # spectral display, region-sized, float32 [0, 1]
    envelope: Array  # region-sized bool
    trace: Array  # exact signed velocity per column (0 where no pixel would show)
    region: SpectralRegion
    aliased: bool


def _spectral(kind: str, rng: np.random.Generator, lay: _Layout, timing: _Timing) -> _Strip:
    """The spectrum of `kind` in the region, its envelope, trace and calibration."""
    rows, cols = lay.y1 - lay.y0 + 1, lay.x1 - lay.x0 + 1
    v = _velocity(kind, rng, timing.t, timing.r_times, timing.rr)
    positive = kind == "mitral_inflow"
    side = rng.uniform(0.65, 0.85) if positive else rng.uniform(0.15, 0.35)
    ref_y = round(side * (rows - 1))
    side_rows, other_rows = (ref_y, rows - 1 - ref_y) if positive else (rows - 1 - ref_y, ref_y)
    aliased = kind != "tricuspid_regurgitation" and rng.random() < _ALIAS_PROBABILITY
    fill = (1 + rng.uniform(0.2, 0.6) * other_rows / side_rows if aliased
            else rng.uniform(0.6, 0.88))  # peak / scale edge: > 1 wraps
    dv = float(np.abs(v).max()) / (fill * side_rows)  # cm/s per pixel
    region = SpectralRegion(x0=lay.x0, y0=lay.y0, x1=lay.x1, y1=lay.y1, ref_x=0, ref_y=ref_y,
                            delta_x=float(timing.t[1]), delta_y=-dv,
                            data_type=4 if kind == "tricuspid_regurgitation" else 3)
    trace = np.where(np.abs(v) >= dv, v, 0.0)  # what rasterises to at least one pixel
    vel = (ref_y - np.arange(rows, dtype=float))[:, None] * dv  # centre velocity of each row
    sign, speed = np.sign(trace)[None, :], np.abs(trace)[None, :]
    envelope = np.zeros((rows, cols), bool)
    density = np.zeros((rows, cols))
    cw = region.data_type == 4
    # A row shows velocity vel, and vel +/- the span when the scale wraps (aliasing).
    for shift in (0.0, rows * dv, -rows * dv) if aliased else (0.0,):
        u = (vel + shift) * sign  # > 0 where the row shows velocities of the flow's direction
        envelope |= (u > 0) & (u <= speed)
        inner = np.clip(u / np.maximum(speed, 1e-9), 0, 1)
        body = (0.5 + 0.5 * inner) if cw else (0.25 + 0.75 * inner ** 1.5)  # CW fills in
        edge = np.exp(-(((u - speed) / (1.2 * dv)) ** 2) * (u > speed))  # soft outer edge
        density += np.where(u > 0, body * edge, 0.0)
    # Beat-to-beat brightness, and wall-filter clutter hugging the baseline.
    bright = 0.8 + 0.2 * np.interp(timing.t, np.linspace(0, timing.t[-1], 12), rng.random(12))
    clutter = 0.35 * rng.random(cols) * np.exp(-((np.arange(rows)[:, None] - ref_y) / 1.5) ** 2)
    layer = np.clip(rng.uniform(0.6, 1.05) * density * bright + clutter, 0, 1).astype(F32)
    return _Strip(layer, envelope, trace, region, aliased)


def _not_doppler(rng: np.random.Generator, lay: _Layout, timing: _Timing, canvas: Array
                 ) -> tuple[Array, Array]:
    """A B-mode sector or an M-mode strip: (speckle-free tissue layer, where the scanner
    images), both H x W; marks and header go onto `canvas`."""
    h, w = lay.h, lay.w
    r = np.arange(h, dtype=float)[:, None]
    c = np.arange(w, dtype=float)[None, :]
    if rng.random() < 0.5:  # B-mode sector with chambers, walls and a bright pericardium
        ax, ay, depth = w / 2 + rng.uniform(-0.05, 0.05) * w, 0.03 * h, 0.92 * h
        half = math.radians(rng.uniform(35, 45))
        rho, theta = np.hypot(c - ax, r - ay), np.arctan2(c - ax, r - ay)
        tissue = 0.3 + 0.06 * np.sin(rho / rng.uniform(6, 12) + theta * 5) ** 2
        for _ in range(int(rng.integers(2, 5))):
            cy = ay + rng.uniform(0.25, 0.75) * depth
            cx = ax + rng.uniform(-0.5, 0.5) * depth * math.sin(half)
            ey, ex = rng.uniform(0.08, 0.2) * depth, rng.uniform(0.06, 0.16) * depth
            e2 = ((r - cy) / ey) ** 2 + ((c - cx) / ex) ** 2
            tissue = np.where(e2 < 1, 0.03, np.where(e2 < 1.5, tissue + 0.25, tissue))
        tissue += 0.4 * np.exp(-(((rho - rng.uniform(0.78, 0.88) * depth) / 4) ** 2))
        support = (rho < depth) & (np.abs(theta) < half)
        tissue *= (1 - 0.45 * rho / depth) * support
        mark_col = min(w - 2, round(ax + depth * math.sin(half)) + 4)
        for k in range(1, 6):  # depth marks
            canvas[round(ay + k * depth / 6), mark_col] = 0.8
        draw_text(canvas, "2D", 1, 1, scale=lay.scale, value=0.85)
    else:  # M-mode: interfaces thickening and moving with each systole of the ECG
        systole = np.zeros(w)
        systole[lay.x0:lay.x1 + 1] = np.maximum.reduce(
            [_wave(timing.t, r0 + 0.05, 0.15, 0.25) for r0 in timing.r_times])
        rows = lay.y1 - lay.y0
        tissue = np.full((h, w), 0.08)  # diffuse echoes between the interfaces
        for _ in range(int(rng.integers(4, 8))):
            centre = lay.y0 + rng.uniform(0.05, 0.95) * rows + rng.uniform(-12, 12) * systole
            tissue += rng.uniform(0.3, 0.9) * np.exp(-(((r - centre) / rng.uniform(1.5, 6)) ** 2))
        support = (r >= lay.y0) & (r <= lay.y1) & (c >= lay.x0) & (c <= lay.x1)
        tissue *= support
        for k in range(0, rows, max(rows // 6, 1)):  # depth ticks
            canvas[lay.y0 + k, lay.x0 - 3 * lay.scale:lay.x0] = 0.85
        draw_text(canvas, "MM", 1, 1, scale=lay.scale, value=0.85)
    return np.clip(tissue, 0, 1).astype(F32), support


def make_doppler(seed: int, *, kind: str | None = None, height: int = 256, width: int = 512
                 ) -> DopplerPhantom:
    """One spectral Doppler (or not_doppler) screen capture with its ground truth; `kind`
    None draws one of DOPPLER_TYPES from the seed."""
    rng = np.random.default_rng(seed)
    kind = DOPPLER_TYPES[int(rng.integers(len(DOPPLER_TYPES)))] if kind is None else kind
    if kind not in DOPPLER_TYPES:
        raise ValueError(f"kind must be one of {DOPPLER_TYPES}, not {kind!r}")
    lay = _Layout.of(height, width)
    timing = _Timing.draw(rng, lay.x1 - lay.x0 + 1)
    overlay = np.full((height, width), np.nan, F32)  # NaN: transparent
    envelope = np.zeros((height, width), bool)
    strip = None
    if kind == "not_doppler":
        layer, support = _not_doppler(rng, lay, timing, overlay)
    else:
        strip = _spectral(kind, rng, lay, timing)
        layer, support = np.zeros((height, width), F32), np.zeros((height, width), bool)
        inside = (slice(lay.y0, lay.y1 + 1), slice(lay.x0, lay.x1 + 1))
        layer[inside], envelope[inside], support[inside] = strip.layer, strip.envelope, True
        cw = strip.region.data_type == 4
        _draw_frame(overlay, lay, strip.region, unit="M/S" if cw else "CM/S",
                    header="CW" if cw else "PW")
    _draw_ecg(overlay, lay, timing.t, timing.r_times, value=float(rng.uniform(0.75, 0.95)))
    transparent = np.isnan(overlay)
    clean = np.where(transparent, layer, overlay).astype(F32)
    strength = float(rng.uniform(0.7, 1.0) if strip is None else rng.uniform(0.45, 0.9))
    speckled = np.where(support, add_speckle(layer, rng, strength), layer)  # margins stay black
    noisy = np.where(transparent, speckled, overlay)
    image = np.rint(noisy * 255).astype(np.uint8)
    speckle = support & transparent
    if strip is None:
        return DopplerPhantom(image=image, envelope=envelope, kind=kind, region=None,
                              peak_velocity_cm_s=None, e_cm_s=None, a_cm_s=None,
                              e_a_ratio=None, vti_cm=None, aliased=False, clean=clean,
                              speckle=speckle, speckle_strength=strength)
    exact = measure_trace(strip.trace, strip.region.delta_x, kind)
    return DopplerPhantom(
        image=image, envelope=envelope, kind=kind, region=strip.region,
        peak_velocity_cm_s=exact.peak_velocity_cm_s, e_cm_s=exact.e_cm_s, a_cm_s=exact.a_cm_s,
        e_a_ratio=exact.e_a_ratio, vti_cm=measure_doppler(envelope, strip.region, kind).vti_cm,
        aliased=strip.aliased, clean=clean, speckle=speckle, speckle_strength=strength)


def doppler_batch(seeds: Sequence[int], height: int = 256, width: int = 512) -> dict[str, Array]:
    """Training arrays for the phantoms of the given seeds: images (N,1,H,W) float32 speckled
    [0,1], clean (N,1,H,W), masks (N,1,H,W) float32 envelope, labels (N,) int64 index in
    DOPPLER_TYPES, peak_velocity_cm_s (N,) float32 (NaN where none)."""
    n = len(seeds)
    out: dict[str, Array] = {
        "images": np.empty((n, 1, height, width), F32),
        "clean": np.empty((n, 1, height, width), F32),
        "masks": np.empty((n, 1, height, width), F32), "labels": np.empty(n, np.int64),
        "peak_velocity_cm_s": np.empty(n, F32)}
    for i, seed in enumerate(seeds):
        p = make_doppler(seed, height=height, width=width)
        out["images"][i, 0] = p.image / F32(255)
        out["clean"][i, 0] = p.clean
        out["masks"][i, 0] = p.envelope
        out["labels"][i] = DOPPLER_TYPES.index(p.kind)
        peak = p.peak_velocity_cm_s
        out["peak_velocity_cm_s"][i] = np.nan if peak is None else peak
    return out
