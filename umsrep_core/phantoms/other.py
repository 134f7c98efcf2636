"""Drawn radiographs of anatomy other than the chest: the chest model's negatives.

A received CR or DX image is not always a chest, and a chest model shown a tibia still draws
lungs on it. These drawings teach the applicability class what other radiographs look like in
the large: air dark, soft tissue grey, bone bright with a denser cortex, on a detector with its
noise. Kinds: a limb (one or two long bones, maybe a joint), a hand (fingers fanned out), a
skull (an oval vault), a pelvis (two wings and a ring). Display orientation (bright = dense),
float32 in [0, 1].
"""

from __future__ import annotations

import numpy as np

__all__ = ["OTHER_KINDS", "make_other_radiograph"]

OTHER_KINDS = ("limb", "hand", "skull", "pelvis")
Point = tuple[float, float]


def _capsule(yy: np.ndarray, xx: np.ndarray, a: Point, b: Point, radius: float) -> np.ndarray:
    """Distance of every pixel to the segment a-b, minus `radius` (negative inside)."""
    (ay, ax), (by, bx) = a, b
    dy, dx = by - ay, bx - ax
    t = np.clip(((yy - ay) * dy + (xx - ax) * dx) / max(dy * dy + dx * dx, 1e-9), 0, 1)
    distance: np.ndarray = np.hypot(yy - ay - t * dy, xx - ax - t * dx) - radius
    return distance


def _bone(inside: np.ndarray) -> np.ndarray:
    """A bone's density from its signed distance: the cortex (the rim) denser than the
    marrow, edges soft over a pixel or two."""
    body = np.clip(-inside / 2, 0, 1)
    cortex = np.exp(-((inside + 3) / 2.5) ** 2)
    out: np.ndarray = 0.55 * body + 0.35 * cortex * (inside < 0)
    return out


def _limb(yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = yy.shape
    angle = rng.uniform(-0.3, 0.3) + (np.pi / 2 if rng.random() < 0.3 else 0)
    c, s = np.cos(angle), np.sin(angle)
    cy, cx, half = h / 2, w / 2, max(h, w) * 0.6
    a, b = (cy - c * half, cx - s * half), (cy + c * half, cx + s * half)
    width = min(h, w) * rng.uniform(0.12, 0.22)
    density = 0.35 * np.clip(-_capsule(yy, xx, a, b, width) / 6, 0, 1)
    for offset in ([0.0] if rng.random() < 0.5 else [-0.35, 0.35]):
        shift = offset * width
        pa, pb = (a[0] - s * shift, a[1] + c * shift), (b[0] - s * shift, b[1] + c * shift)
        density += _bone(_capsule(yy, xx, pa, pb, width * rng.uniform(0.2, 0.35)))
    if rng.random() < 0.5:  # a joint: the bone's end widened, a gap, the next bone
        gap = rng.uniform(-0.2, 0.2) * half
        joint = (cy + c * gap, cx + s * gap)
        density *= np.hypot(yy - joint[0], xx - joint[1]) > width * 0.15
        density += _bone(np.hypot(yy - joint[0] + c * width * 0.5,
                                  xx - joint[1] + s * width * 0.5) - width * 0.45) * 0.6
    limb: np.ndarray = density
    return limb


def _hand(yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = yy.shape
    palm = (h * 0.7, w * 0.5)
    size = min(h, w)
    palm_edge = np.hypot((yy - palm[0]) / 1.2, xx - palm[1]) - size * 0.22
    density: np.ndarray = 0.35 * np.clip(-palm_edge / 6, 0, 1)
    for k in range(5):
        angle = -0.9 + k * 0.45 + rng.uniform(-0.1, 0.1)
        length = size * rng.uniform(0.35, 0.5) * (0.7 if k == 0 else 1)
        base = (palm[0] - np.cos(angle) * size * 0.18, palm[1] + np.sin(angle) * size * 0.18)
        tip = (base[0] - np.cos(angle) * length, base[1] + np.sin(angle) * length)
        density = np.maximum(density, 0.35 * np.clip(-_capsule(yy, xx, base, tip,
                                                                size * 0.05) / 4, 0, 1))
        for j in range(3):  # phalanges: three bones with joint gaps between them
            f0, f1 = j / 3 + 0.03, (j + 1) / 3 - 0.03
            p0 = (base[0] + (tip[0] - base[0]) * f0, base[1] + (tip[1] - base[1]) * f0)
            p1 = (base[0] + (tip[0] - base[0]) * f1, base[1] + (tip[1] - base[1]) * f1)
            density += _bone(_capsule(yy, xx, p0, p1, size * 0.022))
        density += _bone(_capsule(yy, xx, base, palm, size * 0.025))  # a metacarpal
    return density


def _skull(yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = yy.shape
    ry, rx = h * rng.uniform(0.35, 0.45), w * rng.uniform(0.3, 0.4)
    r = np.hypot((yy - h / 2) / ry, (xx - w / 2) / rx)
    vault = np.exp(-((r - 0.93) / 0.04) ** 2) * 0.7  # the calvarium seen edge-on
    brain = 0.45 * (r < 0.93)
    face = _bone(_capsule(yy, xx, (h * 0.72, w * 0.35), (h * 0.72, w * 0.65), h * 0.06)) * 0.5
    skull: np.ndarray = vault + brain + face
    return skull


def _pelvis(yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = yy.shape
    tissue = 0.4 * np.clip(-(np.hypot((yy - h / 2) / 1.4, xx - w / 2) - min(h, w) * 0.45) / 10,
                           0, 1)
    wings = sum(_bone(np.hypot((yy - h * 0.4) / 1.3, xx - w * (0.5 + side * 0.22)) - w * 0.15)
                for side in (-1, 1))
    ring = np.hypot(yy - h * 0.65, xx - w / 2)
    inlet = np.exp(-((ring - w * 0.12) / (w * 0.02)) ** 2) * 0.5
    femurs = sum(_bone(_capsule(yy, xx, (h * 0.7, w * (0.5 + side * 0.3)),
                                (h * 1.1, w * (0.5 + side * 0.33)), w * 0.05))
                 for side in (-1, 1))
    pelvis: np.ndarray = tissue + wings + inlet + femurs + rng.uniform(0, 0.05)
    return pelvis


_DRAW = {"limb": _limb, "hand": _hand, "skull": _skull, "pelvis": _pelvis}


def make_other_radiograph(seed: int, kind: str | None = None, *, side: int = 512
                          ) -> np.ndarray:
    """A drawn radiograph of `kind` (default: one of OTHER_KINDS from the seed), `side` / 2 to
    `side` pixels a side, with a detector's noise and a random display contrast."""
    rng = np.random.default_rng(seed)
    kind = OTHER_KINDS[int(rng.integers(len(OTHER_KINDS)))] if kind is None else kind
    if kind not in _DRAW:
        raise ValueError(f"kind {kind!r}: choose one of {OTHER_KINDS}")
    h, w = (int(rng.integers(side // 2, side + 1)) for _ in range(2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    density = _DRAW[kind](yy, xx, rng)
    image = 0.05 + 0.9 * np.clip(density, 0, 1.2) / 1.2
    image = image + rng.normal(0, rng.uniform(0.005, 0.03), image.shape)
    out: np.ndarray = np.clip(image, 0, 1) ** rng.uniform(0.7, 1.4)
    return out.astype(np.float32)
