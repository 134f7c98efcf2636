"""Synthetic PA chest radiographs with exact ground truth (numpy only, deterministic by seed).

Geometry. Anatomy is drawn in patient coordinates (x towards the image right, i.e. the
patient's left in a PA view; y downwards; one unit is about 17 cm), rotated by a few degrees
and scaled onto the pixel grid. Each lung is an ellipse cut medially by the mediastinum and
below by its diaphragm dome; the heart is a tilted ellipse sitting on the diaphragm.

Mask conventions (the ground truth):
- "right_lung" is the patient's right lung, on the IMAGE LEFT; "left_lung" on the image right.
- The three masks are mutually exclusive: the heart mask is removed from the lung fields, as in
  the SCR (JSRT) annotations; the mediastinum belongs to no mask.
- Lung masks are the anatomical lung fields: they INCLUDE regions hidden by an effusion,
  consolidation, nodule or mass, so the thoracic width (and the CTR) stays defined.
- `ctr` is computed from the masks by `umsrep_core.measure.chest.cardiothoracic_ratio`.

Intensities. `clean` is display-oriented (bright = dense) in [0, 1], noise free; `image` holds
stored values: `clean` with quantum and electronic noise, mapped linearly onto a random part
of the 12-16-bit range, inverted for MONOCHROME1 (where high values are dark).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from umsrep_core.measure.chest import STRUCTURES, cardiothoracic_ratio
from umsrep_core.phantoms.font import GLYPH_CHARS, draw_text

FINDINGS = ("nodule", "mass", "consolidation", "effusion", "cardiomegaly")
PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")
_ATTENUATION = 3.0  # display value 1 transmits exp(-3) of the unattenuated photons

F32 = np.float32
Array = np.ndarray


@dataclass(frozen=True, eq=False)
class ChestPhantom:
    image: Array  # uint16 stored values, H x W
    bits_stored: int
    photometric: str  # "MONOCHROME1" (high = dark) or "MONOCHROME2"
    pixel_spacing_mm: float
    masks: dict[str, Array]  # right_lung, left_lung, heart: bool H x W, mutually exclusive
    abnormal: bool
    findings: tuple[str, ...]
    ctr: float
    clean: Array  # float32 [0, 1], bright = dense, before noise and quantisation


def _soft(d: Array, width: float) -> Array:
    """0..1 ramp across a boundary; d > 0 inside. The 0.5 level is the boundary itself."""
    return np.clip(F32(0.5) + d / F32(width), F32(0.0), F32(1.0))


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> Array:
    """Zero-mean, unit-ish smooth random field: a cells x cells grid, bilinearly upsampled."""
    def interp(n: int, m: int) -> Array:
        pos = np.clip((np.arange(n) + 0.5) * m / n - 0.5, 0, m - 1)
        i0 = np.minimum(pos.astype(int), m - 2) if m > 1 else np.zeros(n, int)
        frac = (pos - i0).astype(F32)
        mat = np.zeros((n, m), F32)
        mat[np.arange(n), i0] = 1 - frac
        mat[np.arange(n), np.minimum(i0 + 1, m - 1)] += frac
        return mat
    grid = rng.standard_normal((cells, cells)).astype(F32)
    field: Array = interp(h, cells) @ grid @ interp(w, cells).T
    return field


class _Frame:
    """Patient coordinates of every pixel, and pixel boxes around patient-space rectangles."""

    def __init__(self, h: int, w: int, *, centre: tuple[float, float], unit: float,
                 angle: float):
        cx, cy = centre
        self.h, self.w, self.cx, self.cy, self.unit = h, w, cx, cy, unit
        self.cos, self.sin = math.cos(angle), math.sin(angle)
        cols = (np.arange(w, dtype=F32) - F32(cx)) / F32(unit)
        rows = (np.arange(h, dtype=F32) - F32(cy)) / F32(unit)
        self.x = cols[None, :] * F32(self.cos) + rows[:, None] * F32(self.sin)
        self.y = rows[:, None] * F32(self.cos) - cols[None, :] * F32(self.sin)

    def box(self, x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice]:
        xs, ys = np.array([x0, x1, x0, x1]), np.array([y0, y0, y1, y1])
        cols = self.cx + self.unit * (xs * self.cos - ys * self.sin)
        rows = self.cy + self.unit * (xs * self.sin + ys * self.cos)
        r0, r1 = max(int(rows.min()) - 1, 0), min(math.ceil(rows.max()) + 2, self.h)
        c0, c1 = max(int(cols.min()) - 1, 0), min(math.ceil(cols.max()) + 2, self.w)
        return slice(r0, max(r0, r1)), slice(c0, max(c0, c1))


_MEDIAL_FLATTENING = 0.35  # a dome descends less towards the heart than towards the ribs


@dataclass(frozen=True)
class _Anatomy:
    """Random anatomical parameters of one patient, in patient units."""

    half_thorax: float  # T: internal half-width at the widest row
    apex: float  # y of the lung apices
    widest: float  # y of the widest row (ellipse centres)
    lung_ax: float  # lung ellipse half-width
    mediastinum: float  # half-width of the mediastinum next to the lungs
    knob: tuple[float, float]  # aortic knob (y, bulge)
    dome_r: tuple[float, float, float]  # right dome: x of its top, y of its top, curvature
    dome_l: tuple[float, float, float]
    wall: float  # chest wall thickness
    # heart ellipse: centre x, y, semi-axes a, b, tilt; fitted to the rest by draw()
    heart: tuple[float, float, float, float, float] = (0.0, 0.0, 1.0, 1.0, 0.0)

    @staticmethod
    def draw(rng: np.random.Generator, ctr: float) -> _Anatomy:
        t = rng.uniform(0.66, 0.75)
        apex = rng.uniform(-0.74, -0.64)
        cp_r = rng.uniform(0.48, 0.58)  # costophrenic angles
        cp_l = cp_r + rng.uniform(0.0, 0.05)
        top_r = cp_r - rng.uniform(0.17, 0.25)  # the right dome is usually the higher
        top_l = top_r + rng.uniform(0.02, 0.06)
        x_r, x_l = -0.42 * t, 0.42 * t
        anat = _Anatomy(
            half_thorax=t, apex=apex, widest=cp_r - 0.06, lung_ax=rng.uniform(0.33, 0.39),
            mediastinum=rng.uniform(0.085, 0.11),
            knob=(apex + rng.uniform(0.2, 0.28), rng.uniform(0.03, 0.07)),
            dome_r=(x_r, top_r, (cp_r - top_r) / (t + x_r) ** 2),
            dome_l=(x_l, top_l, (cp_l - top_l) / (t - x_l) ** 2),
            wall=rng.uniform(0.08, 0.13))
        return replace(anat, heart=anat._heart(rng, ctr))

    def _heart(self, rng: np.random.Generator, ctr: float
               ) -> tuple[float, float, float, float, float]:
        """A tilted ellipse (long axis to the apex, image lower right) sinking into the
        diaphragm, a third of it right of the midline, scaled until its horizontal extent above
        the diaphragm is 2 * ctr * T."""
        tilt, ratio = rng.uniform(0.7, 0.95), rng.uniform(0.68, 0.8)
        sink = rng.uniform(0.14, 0.22)
        half_w = ctr * self.half_thorax
        hx = half_w / 3
        phi = np.linspace(0, 2 * np.pi, 721)
        a = half_w
        for _ in range(8):
            b = ratio * a
            hy = float(self.heart_floor(np.array([hx]))[0]) - math.hypot(
                a * math.sin(tilt), b * math.cos(tilt)) + sink
            u, v = a * np.cos(phi), b * np.sin(phi)
            x = hx + u * math.cos(tilt) - v * math.sin(tilt)
            y = hy + u * math.sin(tilt) + v * math.cos(tilt)
            above = x[y < self.heart_floor(x)]
            a *= 2 * half_w / float(above.max() - above.min())
        return hx, hy, a, ratio * a, tilt

    def diaphragm(self, x: Array, side: str) -> Array:
        x0, y0, k = self.dome_r if side == "right" else self.dome_l
        medial = (x > x0) if side == "right" else (x < x0)
        curvature = np.where(medial, F32(k * _MEDIAL_FLATTENING), F32(k))
        out: Array = F32(y0) + curvature * (x - F32(x0)) ** 2
        return out

    def heart_floor(self, x: Array) -> Array:
        """The diaphragm under the heart: the higher of the two domes' medial slopes."""
        out: Array = np.minimum(self.diaphragm(x, "right"), self.diaphragm(x, "left"))
        return out

    def lung(self, x: Array, y: Array, side: str) -> tuple[Array, Array]:
        """(inside measure d > 0 for the mask, soft 0..1 field) of one lung before the heart."""
        t, ax = self.half_thorax, self.lung_ax
        xc = -t + ax if side == "right" else t - ax
        ay = self.widest - self.apex
        r2 = ((x - F32(xc)) / F32(ax)) ** 2 + ((y - F32(self.widest)) / F32(ay)) ** 2
        if side == "right":
            hilum = F32(0.02) * np.exp(-((y + F32(0.1)) / F32(0.12)) ** 2)
            medial = -F32(self.mediastinum) - x - hilum
        else:
            ky, kb = self.knob
            knob = F32(kb) * np.exp(-((y - F32(ky)) / F32(0.06)) ** 2)
            medial = x - F32(self.mediastinum) - knob
        d = np.minimum(np.minimum((1 - r2) * F32(ax / 2), medial), self.diaphragm(x, side) - y)
        return d, np.sqrt(np.clip(1 - r2, 0, 1))

    def heart_inside(self, x: Array, y: Array) -> Array:
        hx, hy, a, b, tilt = self.heart
        c, s = F32(math.cos(tilt)), F32(math.sin(tilt))
        u, v = (x - F32(hx)) * c + (y - F32(hy)) * s, (y - F32(hy)) * c - (x - F32(hx)) * s
        r2 = (u / F32(a)) ** 2 + (v / F32(b)) ** 2
        out: Array = np.minimum((1 - r2) * F32(b / 2), self.heart_floor(x) - y)
        return out

    def body_half_width(self, y: Array) -> Array:
        shoulders = F32(0.2) * np.exp(-((y + F32(0.85)) / F32(0.16)) ** 2)
        torso = F32(self.half_thorax + self.wall) + shoulders
        neck = F32(0.2)
        out: Array = neck + (torso - neck) * _soft(y + F32(0.95), 0.2)
        return out


def add_xray_noise(clean: Array, rng: np.random.Generator, dose: float, *,
                   electronic: float = 2.0) -> Array:
    """Noisy version of a display-oriented image (bright = dense), float32 in [0, 1].

    Quantum noise: Poisson photon counts, `dose` photons per pixel where nothing attenuates
    (dense regions receive fewer photons, so they are noisier), drawn exactly below 30 counts
    and by its normal approximation above (indistinguishable there, and ten times faster);
    electronic noise: Gaussian, `electronic` counts standard deviation. The counts are
    log-transformed back to display values.
    """
    counts = F32(dose) * np.exp(F32(-_ATTENUATION) * clean.astype(F32))
    noisy = counts + np.sqrt(counts) * rng.standard_normal(clean.shape, dtype=F32)
    low = counts < 30
    noisy[low] = rng.poisson(counts[low])
    noisy += F32(electronic) * rng.standard_normal(clean.shape, dtype=F32)
    out = -np.log(np.maximum(noisy, F32(0.5)) / F32(dose)) / F32(_ATTENUATION)
    noisy_display: Array = np.clip(out, 0, 1).astype(F32)
    return noisy_display


def _ribs(x: Array, y: Array, *, first: float, spacing: float, count: int,
          curve: Callable[[Array], Array], width: float, lo: float, hi: float) -> Array:
    """Periodic bands along `curve` (y offset as a function of |x|), spacing growing downward."""
    u = np.abs(x)
    z = y - curve(u) - F32(first)
    growth = F32(0.45)
    phase = np.log1p(growth * np.maximum(z, 0)) / (growth * F32(spacing))
    frac = phase - np.floor(phase)
    band = np.maximum(np.sin(F32(np.pi) * np.clip(frac / F32(width), 0, 1)), 0) ** F32(0.5)
    keep = (z > 0) & (phase < count)
    out: Array = np.where(keep, band, 0) * _soft(u - F32(lo), 0.03) * _soft(F32(hi) - u, 0.04)
    return out


def _ellipsoid(x: Array, y: Array, centre: tuple[float, float], radii: tuple[float, float]
               ) -> Array:
    """Projected thickness (0..1) of an ellipsoid: bright in the middle, fading to its rim."""
    (cx, cy), (rx, ry) = centre, radii
    r2 = ((x - F32(cx)) / F32(rx)) ** 2 + ((y - F32(cy)) / F32(ry)) ** 2
    out: Array = np.sqrt(np.clip(1 - r2, 0, 1))
    return out


def _soft_tissue(f: _Frame, anat: _Anatomy, edge: float) -> Array:
    """Body outline (neck, shoulders, trunk) with its thickness: the background density."""
    half = anat.body_half_width(f.y)
    thickness = np.sqrt(np.clip(1 - (f.x / half) ** 2, 0, 1))
    out: Array = F32(0.8) * _soft(half - np.abs(f.x), edge) * thickness ** F32(0.35)
    return out


def _lungs_and_heart(rng: np.random.Generator, f: _Frame, anat: _Anatomy, density: Array,
                     edge: float) -> tuple[Array, dict[str, Array]]:
    """Masks, and the air of the lungs (0..1 per pixel) taken out of density."""
    t = anat.half_thorax
    sl = f.box(-t - 0.02, t + 0.02, anat.apex - 0.02,
               max(anat.dome_r[1], anat.dome_l[1]) + 0.35)
    lx, ly = f.x[sl], f.y[sl]
    heart_d = anat.heart_inside(lx, ly)
    heart_soft = _soft(heart_d, edge)
    masks = {name: np.zeros((f.h, f.w), bool) for name in STRUCTURES}
    masks["heart"][sl] = heart_d > 0
    air = np.zeros((f.h, f.w), F32)
    for side, name in (("right", "right_lung"), ("left", "left_lung")):
        d, depth = anat.lung(lx, ly, side)
        masks[name][sl] = (d > 0) & (heart_d <= 0)
        air[sl] += _soft(d, edge) * (1 - heart_soft) * (F32(0.45) + F32(0.55) * depth)
    # Vessels radiate from the hila (in the mediastinum's edge), branch (more of them farther
    # out), wave and taper; the parenchyma is mottled. |dx| mirrors the left lung's pattern.
    dx = np.abs(lx) - F32(anat.mediastinum - 0.02)
    dy = ly - F32(anat.apex + 0.55)
    rho = np.sqrt(dx * dx + dy * dy)
    mottle = _smooth_noise(rng, lx.shape[0], lx.shape[1], 24)
    angle = (np.arctan2(dy, dx) * F32(rng.uniform(9, 12)) * (1 + F32(1.5) * rho)
             + F32(3) * _smooth_noise(rng, lx.shape[0], lx.shape[1], 10))
    taper = np.exp(-rho / F32(0.3)) * (1 - np.exp(-rho / F32(0.08)))
    vessels = (F32(0.5) + F32(0.5) * np.cos(angle)) ** 6 * taper
    air[sl] *= F32(1) - F32(0.45) * vessels - F32(0.05) * mottle
    density -= F32(0.5) * air
    density[sl] += F32(0.06) * heart_soft
    return air, masks


def _bones(rng: np.random.Generator, f: _Frame, anat: _Anatomy, density: Array, *, air: Array,
           edge: float) -> None:
    """Spine, ribs (posterior and anterior), clavicles, humeral heads; airways."""
    t, apex = anat.half_thorax, anat.apex
    sl = f.box(-0.1, 0.1, -1.6, 1.6)
    sx, sy = f.x[sl], f.y[sl]
    discs = np.cos(F32(np.pi) * (sy - F32(apex)) / F32(0.115)) ** 8
    density[sl] += F32(0.1) * _soft(F32(0.065) - np.abs(sx), edge) * (1 - F32(0.5) * discs)
    carina = F32(apex + rng.uniform(0.35, 0.45))
    density[sl] -= F32(0.13) * _soft(F32(0.03) - np.abs(sx), edge) * _soft(carina - sy, 0.03)

    sl = f.box(-t - anat.wall, t + anat.wall, apex - 0.1, anat.widest + 0.7)
    rx, ry = f.x[sl], f.y[sl]
    visible = F32(0.15) + F32(0.85) * np.clip(air[sl], 0, 1)  # bones show best against air
    bend = F32(rng.uniform(0.6, 0.85))
    density[sl] += F32(0.1) * visible * _ribs(
        rx, ry, first=apex - 0.06, spacing=rng.uniform(0.1, 0.12), count=11,
        curve=lambda u: F32(-0.22) * u + bend * u * u, width=0.45, lo=0.07,
        hi=t + anat.wall * 0.5)
    density[sl] += F32(0.05) * visible * _ribs(
        rx, ry, first=apex + 0.02, spacing=rng.uniform(0.14, 0.17), count=6,
        curve=lambda u: F32(0.45) * (F32(t) - u), width=0.4, lo=0.25, hi=t + 0.02)

    cl_y, cl_len = apex + rng.uniform(0.1, 0.16), rng.uniform(0.45, 0.55)
    sl = f.box(-0.7, 0.7, cl_y - 0.25, cl_y + 0.1)
    u = np.abs(f.x[sl]) - F32(0.06)
    s = u / F32(cl_len)
    centre = F32(cl_y) - F32(0.3) * u + F32(0.025) * np.sin(F32(2 * np.pi) * s)
    band = np.sqrt(np.clip(1 - ((f.y[sl] - centre) / (F32(0.03) - F32(0.008) * s)) ** 2, 0, 1))
    density[sl] += F32(0.16) * band * _soft(u, 0.01) * _soft(F32(cl_len) - u, 0.02)

    for sign in (-1, 1):
        hx, hy = sign * (t + anat.wall + 0.12), apex - 0.1
        sl = f.box(hx - 0.12, hx + 0.12, hy - 0.12, hy + 0.12)
        density[sl] += F32(0.12) * _ellipsoid(f.x[sl], f.y[sl], (hx, hy), (0.11, 0.11))


def _gastric_bubble(f: _Frame, anat: _Anatomy, density: Array, edge: float) -> None:
    """Air under the left dome with a flat air-fluid level."""
    gx, gy = anat.dome_l[0] + 0.05, anat.dome_l[1] + 0.1
    sl = f.box(gx - 0.1, gx + 0.1, gy - 0.06, gy + 0.06)
    inside = _ellipsoid(f.x[sl], f.y[sl], (gx, gy), (0.09, 0.05)) > 0
    density[sl] -= F32(0.16) * inside * _soft(F32(gy + 0.01) - f.y[sl], edge)


def _lung_point(rng: np.random.Generator, f: _Frame, lungs: Array) -> tuple[float, float]:
    """A random point inside the lungs, in patient coordinates (rejection sampling)."""
    for _ in range(10_000):
        r, c = int(rng.integers(f.h)), int(rng.integers(f.w))
        if lungs[r, c]:
            return float(f.x[r, c]), float(f.y[r, c])
    raise RuntimeError("no lung pixel found")  # masks always hold lungs; a guard, not a path


def _blob(rng: np.random.Generator, f: _Frame, density: Array, centre: tuple[float, float],
          mass: bool) -> None:
    """A nodule (round, 1-3 cm across) or a mass (lobulated, over 3 cm): a dense sphere-like
    opacity, sized as radiology names them (r0: a radius in units, see Geometry)."""
    px, py = centre
    r0 = rng.uniform(0.09, 0.15) if mass else rng.uniform(0.03, 0.09)
    amp = rng.uniform(0.2, 0.3) if mass else rng.uniform(0.12, 0.2)
    lob = F32(0.15 if mass else 0.0)
    phases = rng.uniform(0, 2 * np.pi, 2).astype(F32)
    sl = f.box(px - 1.3 * r0, px + 1.3 * r0, py - 1.3 * r0, py + 1.3 * r0)
    dx, dy = f.x[sl] - F32(px), f.y[sl] - F32(py)
    theta = np.arctan2(dy, dx)
    radius = F32(r0) * (1 + lob * np.sin(3 * theta + phases[0])
                        + F32(0.6) * lob * np.sin(5 * theta + phases[1]))
    profile = np.sqrt(np.clip(1 - (dx * dx + dy * dy) / radius ** 2, 0, 1))
    density[sl] += F32(amp) * profile ** F32(0.7)


def _findings(rng: np.random.Generator, f: _Frame, anat: _Anatomy, *, findings: Sequence[str],
              density: Array, air: Array, masks: dict[str, Array]) -> None:
    """Draw the abnormal findings (cardiomegaly is in the anatomy already) into density."""
    lungs = masks["right_lung"] | masks["left_lung"]
    for finding in findings:
        if finding in ("nodule", "mass"):
            _blob(rng, f, density, _lung_point(rng, f, lungs), finding == "mass")
        elif finding == "consolidation":  # patchy airspace opacity, confined to the lung
            px, py = _lung_point(rng, f, lungs)
            ax, ay = rng.uniform(0.12, 0.22), rng.uniform(0.1, 0.18)
            sl = f.box(px - ax, px + ax, py - ay, py + ay)
            shape = _ellipsoid(f.x[sl], f.y[sl], (px, py), (ax, ay))
            patches = _soft(_smooth_noise(rng, shape.shape[0], shape.shape[1], 6) + F32(0.6), 1.2)
            density[sl] += F32(0.45) * np.sqrt(shape) * patches * air[sl]
        elif finding == "effusion":  # basal fluid with a meniscus, higher laterally
            right = rng.random() < 0.5
            x0, y0, k = anat.dome_r if right else anat.dome_l
            cp = y0 + k * (anat.half_thorax - abs(x0)) ** 2
            level = cp - rng.uniform(0.18, 0.38)
            sl = f.box(*((-anat.half_thorax, 0.0) if right else (0.0, anat.half_thorax)),
                       level - 0.05, cp + 0.1)
            ex, ey = f.x[sl], f.y[sl]
            top = F32(level) + F32(0.25) * (F32(anat.half_thorax) - np.abs(ex))
            fluid = _soft(ey - top, 0.05) * ((ex < 0) if right else (ex > 0))
            density[sl] += F32(0.55) * air[sl] * fluid


def _burn_in(rng: np.random.Generator, clean: Array) -> None:
    """Collimation borders, the lead side marker and text-like annotation blocks."""
    h, w = clean.shape
    top, bottom = (int(rng.uniform(0, 0.05) * h) for _ in range(2))
    left, right = (int(rng.uniform(0, 0.05) * w) for _ in range(2))
    shutter = F32(rng.uniform(0.85, 0.97))
    clean[:top] = shutter
    clean[h - bottom:] = shutter
    clean[:, :left] = shutter
    clean[:, w - right:] = shutter
    scale = max(1, round(h / 110))
    letter = "R" if rng.random() < 0.5 else "L"  # R on the image left, L on the image right
    row = top + int(rng.uniform(0.03, 0.08) * h)
    col = left + int(0.04 * w) if letter == "R" else w - right - int(0.04 * w) - 4 * scale
    clean[row - scale:row + 6 * scale, col - scale:col + 4 * scale] = 0.05
    draw_text(clean, letter, row, col, scale=scale, value=1.0)
    small = max(1, round(h / 300))
    chars = np.array(list(GLYPH_CHARS.replace(" ", "")))
    corner_row = h - bottom - int(0.02 * h) - 3 * 7 * small
    for line in range(int(rng.integers(1, 4))):
        text = " ".join("".join(rng.choice(chars, int(rng.integers(2, 7))))
                        for _ in range(int(rng.integers(1, 4))))
        draw_text(clean, text, corner_row + line * 7 * small, left + int(0.03 * w),
                  scale=small, value=0.98)


def _generate(seed: int, size: int | None, abnormal: bool | None, photometric: str | None,
              shrink_to: int | None = None) -> tuple[ChestPhantom, Array]:
    rng = np.random.default_rng(seed)
    shrink = 1.0
    if size is None:
        h = int(rng.integers(1024, 3073))
        w = round(h * rng.uniform(0.82, 1.0))
        if shrink_to is not None:  # the same radiograph, drawn at what its letterbox keeps
            shrink = h / shrink_to
            h, w = shrink_to, round(w / shrink)
    elif size < 64:
        raise ValueError(f"a chest phantom needs at least 64 x 64 pixels, not {size}")
    else:
        h = w = int(size)
    abnormal = bool(rng.random() < 0.5) if abnormal is None else abnormal
    if photometric is None:
        photometric = PHOTOMETRICS[int(rng.integers(2))]
    elif photometric not in PHOTOMETRICS:
        raise ValueError(f"photometric must be one of {PHOTOMETRICS}, not {photometric!r}")
    drawn = rng.choice(len(FINDINGS), int(rng.integers(1, 3)), replace=False)
    findings = tuple(FINDINGS[i] for i in sorted(drawn)) if abnormal else ()
    ctr = rng.uniform(0.55, 0.64) if "cardiomegaly" in findings else rng.uniform(0.39, 0.46)
    anat = _Anatomy.draw(rng, ctr)
    unit = min(h, w) / 2 * rng.uniform(0.88, 1.0)
    frame = _Frame(h, w, centre=(w / 2 + rng.uniform(-0.04, 0.04) * w,
                                 h / 2 + rng.uniform(-0.02, 0.05) * h),
                   unit=unit, angle=math.radians(rng.uniform(-3, 3)))
    edge = max(0.008, 1.5 / frame.unit)  # ~1.5 mm unsharpness, at least 1.5 pixels
    density = _soft_tissue(frame, anat, edge)
    air, masks = _lungs_and_heart(rng, frame, anat, density, edge)
    _findings(rng, frame, anat, findings=findings, density=density, air=air, masks=masks)
    _bones(rng, frame, anat, density, air=air, edge=edge)
    if rng.random() < 0.7:
        _gastric_bubble(frame, anat, density, edge)
    # Exposure and processing: a smooth heel-effect gradient and a random contrast curve.
    heel = F32(1) + F32(rng.uniform(-0.05, 0.05)) * (np.arange(h, dtype=F32)[:, None] / h - 0.5)
    clean = np.clip(density * heel, 0, 1) ** F32(rng.uniform(0.85, 1.15))
    clean = F32(0.03) + F32(0.94) * clean
    _burn_in(rng, clean)
    # Shrunk by a factor k, a pixel averages k*k source pixels: k*k times their photons, and
    # k times their electronic noise.
    noisy = add_xray_noise(clean, rng, dose=rng.uniform(150, 1500) * shrink**2,
                           electronic=2.0 * shrink)
    bits = int(rng.integers(12, 17))
    top = 2 ** bits - 1
    lo, hi = rng.uniform(0.0, 0.12) * top, rng.uniform(0.8, 1.0) * top
    stored = np.rint(F32(lo) + noisy * F32(hi - lo)).astype(np.uint16)
    if photometric == "MONOCHROME1":
        stored = (top - stored).astype(np.uint16)
    ratio, why = cardiothoracic_ratio(masks["right_lung"], masks["left_lung"], masks["heart"])
    if ratio is None:  # the anatomy always holds both lungs and the heart at >= 64 pixels
        raise RuntimeError(f"phantom {seed}: {why}")
    phantom = ChestPhantom(
        image=stored, bits_stored=bits, photometric=photometric,
        pixel_spacing_mm=float(rng.uniform(360, 430) / h), masks=masks, abnormal=abnormal,
        findings=findings, ctr=ratio, clean=clean.astype(F32))
    return phantom, noisy


def make_chest(seed: int, *, size: int | None = None, abnormal: bool | None = None,
               photometric: str | None = None) -> ChestPhantom:
    """One PA chest radiograph phantom. `size`: square side in pixels (None: random 1k-3k,
    portrait); `abnormal`/`photometric`: None draws them from the seed."""
    return _generate(seed, size, abnormal, photometric)[0]


def chest_with_noise(seed: int, *, size: int | None = None, shrink_to: int | None = None
                     ) -> tuple[ChestPhantom, Array]:
    """make_chest's phantom and its noisy image as displayed (float32 in [0, 1], bright
    bone, before the detector's stored values): the pair a denoiser is scored on.
    `shrink_to` (with `size` None): the radiograph of this seed (same anatomy, findings and
    label) drawn `shrink_to` pixels high, with the noise a pixel has when the full-size
    image is shrunk that far: what a letterbox of it shows, at a fraction of the cost."""
    return _generate(seed, size, None, None, shrink_to)
