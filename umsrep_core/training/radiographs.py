"""Training data from real chest radiographs: data sets whose labels differ, in one pool.

UMS-Rep learns one encoder from every image, whatever it is labelled for (the paper's unified
representation): JSRT/SCR gives lung and heart masks, NIH ChestX-ray8 normal or pneumonia, and
every image is a denoising target (synthetic noise on its own pixels). A batch mixes:
- whole radiographs letterboxed to the model size as the Predictor letterboxes a received one,
  with random geometry and contrast; half from images with masks, half from images with a
  class; a target an image lacks is unknown (masks NaN; label CHEST, "a chest, class unknown");
  every other one with noise added, and itself the denoising target;
- tiles of the radiographs' own pixels with noise added, for the denoiser, which serves the
  source grid in tiles (no segmentation or class target: NO_CLASS);
- negatives, the images the model must learn not to measure (class OTHER, the last class):
  radiographs turned or inverted, a part of the body filling the image, drawn radiographs of
  other anatomy, spectral Doppler strips, flat and noise fields, text and shapes on them.
Validation (`radiograph_held_out`) draws the same kinds from the data sets' validation split
of patients, with fixed seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from umsrep_core.data import open_dataset, split
from umsrep_core.imaging.geometry import Letterbox
from umsrep_core.measure.chest import STRUCTURES
from umsrep_core.models.bundle import OTHER_CLASS
from umsrep_core.phantoms.doppler import make_doppler
from umsrep_core.phantoms.font import GLYPH_CHARS, draw_text
from umsrep_core.phantoms.other import make_other_radiograph
from umsrep_core.training.data import CHEST, NO_CLASS, NO_TARGET, Batch, HeldOut

__all__ = ["CLASS_LABELS", "NEGATIVES", "NOISE", "OTHER", "RadiographPool",
           "radiograph_held_out"]

CLASS_LABELS = ["normal", "pneumonia", OTHER_CLASS]
OTHER = CLASS_LABELS.index(OTHER_CLASS)
NEGATIVES = ("turned", "inverted", "part", "drawn", "doppler", "field", "graphic")
NOISE = (0.01, 0.08)  # the range of the denoiser's synthetic noise (standard deviation)
VALIDATION_NOISE = 0.05
_UNKNOWN = float(NO_TARGET)  # as torch takes it
_TILES_FROM = 4  # a tile per this many images of a batch's radiographs, as many negatives
# Drawn radiographs of other anatomy take a tenth of a second each: a bank is drawn once, and
# a batch picks from it; validation draws its own, from other seeds.
_DRAWN, _DRAWN_VALIDATION_SEED = 64, 1_000_000
_REFRESH_SEED = 2_000_000  # the batches batch norms are refreshed over (refresh_images)


class _Split:
    """One split of the data sets: whole images letterboxed, masks, labels, own pixels; and
    a bank of drawn radiographs of other anatomy for its negatives."""

    def __init__(self, folders: Sequence[str], which: str, size: int, *, drawn_seed: int
                 ) -> None:
        wholes, masks, labels, sources = [], [], [], []
        for folder in folders:
            for sample in split(open_dataset(Path(folder)), which):
                box = Letterbox.fit(sample.image.shape, size)  # as the Predictor's
                wholes.append(box.to_model(sample.image))
                known = all(s in sample.masks for s in STRUCTURES)
                masks.append(np.stack([box.to_model(sample.masks[s].astype(np.float32)) > 0.5
                                       for s in STRUCTURES]) if known else None)
                labels.append(CHEST if sample.label is None else int(sample.label))
                # 8 bits are what the shared sets hold; they keep a thousand radiographs'
                # own pixels in a few hundred MB
                sources.append(np.rint(sample.image * 255).astype(np.uint8))
        if not wholes:
            raise ValueError(f"no images in the {which} split of {list(folders)}")
        self.wholes = np.stack(wholes).astype(np.float32)[:, None].copy()
        self.masked = np.array([m is not None for m in masks])
        self.masks = np.stack([m for m in masks if m is not None] or
                              [np.zeros((len(STRUCTURES), size, size), bool)])
        self.mask_of = np.cumsum(self.masked) - 1  # image index -> row of self.masks
        self.labels = np.array(labels, np.int64)
        self.sources = sources
        self.drawn = [_letterboxed(make_other_radiograph(seed, side=2 * size), size)
                      for seed in range(drawn_seed, drawn_seed + _DRAWN)]


class RadiographPool:
    """Batches of real radiographs (see the module docstring) from data set `folders'` train
    split, composed for `heads`: a model learns from the images its heads have targets for
    (a separate segmenter from masked radiographs only, a separate denoiser from tiles only),
    and a multi-task model from every kind in one batch. Its images are fixed; its random
    generators are part of a checkpoint."""

    def __init__(self, folders: Sequence[str], *, image_size: int, seed: int = 0,
                 heads: Sequence[str] = ("denoise", "segment", "classify")) -> None:
        self.size, self.heads = image_size, tuple(heads)
        self.data = _Split(folders, "train", image_size, drawn_seed=seed * _DRAWN)
        self.with_masks = np.flatnonzero(self.data.masked)
        self.with_class = np.flatnonzero(self.data.labels >= 0)
        for head, have in (("segment", self.with_masks), ("classify", self.with_class)):
            if head in self.heads and not len(have):
                raise ValueError(f"{list(folders)}: the {head} head needs images with "
                                 f"{'masks' if head == 'segment' else 'a class'}")
        self.rng = np.random.default_rng(seed)
        self.torch_rng = torch.Generator().manual_seed(seed)
        self._refresh: dict[int, np.ndarray] = {}  # batch -> refresh_images(batch)

    def refresh_images(self, batch: int) -> np.ndarray:
        """What batch norms are refreshed over (runs.refresh_batchnorm): as many images as the
        pool holds, in batches of `batch` as training draws them (augmented radiographs,
        tiles, negatives), drawn once from generators of their own, so that validating
        changes neither the training nor the set. Over the whole radiographs alone the
        statistics missed the tiles the denoiser serves on: the 0.8.0 run's denoising PSNR
        gain, 6.4 dB with those, 9.2 with these."""
        if batch not in self._refresh:
            rng, torch_rng = np.random.default_rng(_REFRESH_SEED), torch.Generator()
            torch_rng.manual_seed(_REFRESH_SEED)
            self._refresh[batch] = torch.cat([self._draw(batch, rng, torch_rng)[0] for _ in
                                              range(max(1, len(self) // batch))]).numpy()
        return self._refresh[batch]

    def __len__(self) -> int:
        return len(self.data.wholes)

    def composition(self, batch: int) -> tuple[int, int, int, int]:
        """How many radiographs with masks, with a class, denoising tiles and negatives a
        batch of `batch` holds. Tiles and negatives are an eighth each beside other heads."""
        segment, classify, denoise = (h in self.heads for h in ("segment", "classify",
                                                                 "denoise"))
        extra = max(1, batch // (2 * _TILES_FROM))
        tiles = (extra if segment or classify else batch) if denoise else 0
        negatives = extra if classify else 0
        whole = batch - tiles - negatives
        masked = (whole // 2 if classify else whole) if segment else 0
        return masked, whole - masked, tiles, negatives

    def sample(self, batch: int) -> Batch:
        return self._draw(batch, self.rng, self.torch_rng)

    def _draw(self, batch: int, rng: np.random.Generator, torch_rng: torch.Generator
              ) -> Batch:
        masked, classed, tiles, negatives = self.composition(batch)
        picks = np.concatenate([rng.choice(self.with_masks, masked),
                                rng.choice(self.with_class, classed)]).astype(np.int64)
        images, masks = _augment(torch.from_numpy(self.data.wholes[picks]),
                                 self._masks(picks), torch_rng)
        clean = torch.full_like(images, _UNKNOWN)
        if "denoise" in self.heads:  # every other radiograph a denoising target as well
            clean[1::2] = images[1::2]
            sigma = torch.empty(len(clean[1::2]), 1, 1, 1).uniform_(*NOISE, generator=torch_rng)
            images[1::2] = (images[1::2] + sigma * torch.randn(
                images[1::2].shape, generator=torch_rng)).clamp(0, 1)
        noisy, tile_clean = _tiles(self.data.sources, rng.integers(len(self), size=tiles),
                                   self.size, rng)
        others = torch.zeros(negatives, 1, self.size, self.size)
        for row, kind in enumerate(rng.choice(NEGATIVES, negatives)):
            others[row, 0] = torch.from_numpy(_negative(kind, self.data, self.size, rng))
        unknown = torch.full((tiles + negatives, len(STRUCTURES), self.size, self.size),
                             _UNKNOWN)
        return (torch.cat([images, torch.from_numpy(noisy), others]),
                torch.cat([clean, torch.from_numpy(tile_clean), torch.full_like(others,
                                                                                _UNKNOWN)]),
                torch.cat([masks, unknown]),
                torch.cat([torch.from_numpy(self.data.labels[picks]),
                           torch.full((tiles,), NO_CLASS), torch.full((negatives,), OTHER)]))

    def _masks(self, picks: np.ndarray) -> torch.Tensor:
        out = torch.full((len(picks), len(STRUCTURES), self.size, self.size), _UNKNOWN)
        for row, index in enumerate(picks):
            if self.data.masked[index]:
                out[row] = torch.from_numpy(self.data.masks[self.data.mask_of[index]])
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "torch_rng": self.torch_rng.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.torch_rng.set_state(state["torch_rng"])


def radiograph_held_out(folders: Sequence[str], size: int, *, seed: int = 0) -> HeldOut:
    """The validation split of `folders` as a run validates on it: the whole radiographs
    (masks NaN where unknown), then one negative of each kind per 8 radiographs; a tile of
    each radiograph's own pixels with noise of VALIDATION_NOISE for the denoiser."""
    data = _Split(folders, "validation", size, drawn_seed=_DRAWN_VALIDATION_SEED)
    rng = np.random.default_rng(seed)
    n = len(data.wholes)
    kinds = [NEGATIVES[i % len(NEGATIVES)] for i in range(len(NEGATIVES) * max(1, n // 8))]
    negatives = np.stack([_negative(kind, data, size, rng) for kind in kinds])[:, None]
    masks = np.full((n + len(kinds), len(STRUCTURES), size, size), NO_TARGET, np.float32)
    masks[np.flatnonzero(data.masked)] = data.masks
    noisy, clean = _tiles(data.sources, np.arange(n), size, rng, noise=VALIDATION_NOISE)
    return HeldOut(np.concatenate([data.wholes, negatives]).astype(np.float32),
                   np.full((n + len(kinds), 1, size, size), NO_TARGET, np.float32), masks,
                   np.concatenate([data.labels, np.full(len(kinds), OTHER)]), noisy, clean)


# --- drawing --------------------------------------------------------------------------------


def _letterboxed(image: np.ndarray, size: int) -> np.ndarray:
    return Letterbox.fit(image.shape, size).to_model(image)


def _augment(images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """What real radiographs vary in and the two data sets hardly show (0.7.0, trained
    without most of it, lost its CTR to a black border: MODELS.md); the masks move alike:
    - geometry: rotation (±10°), zoom (0.75-1.12, a field of view taking in shoulders or the
      abdomen), each axis ±10 % more (other aspect ratios), shift (±6 %);
    - the field outside the image: black, as the letterbox's bands, or for one in five a
      bright collimated edge (unexposed film is white);
    - contrast: for half, a vendor's window clipping the darkest and brightest up to 15 % of
      the image; then a random gamma (0.5-2), the display chains' curves that standardising
      cannot undo."""
    n = len(images)
    if not n:  # a batch of tiles alone (a separate denoiser)
        return images, masks

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator) * 2 - 1

    angle = uniform(n) * math.radians(10)
    zoom = 0.935 + 0.185 * uniform(n)
    sy, sx = zoom * (1 + 0.1 * uniform(2, n))
    shift = 0.12 * uniform(n, 2)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos / sx, -sin / sx, shift[:, 0]], 1),
                         torch.stack([sin / sy, cos / sy, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    moved = F.grid_sample(images, grid, align_corners=False)
    outside = 1 - F.grid_sample(torch.ones_like(images), grid, align_corners=False)
    bright = (torch.rand(n, 1, 1, 1, generator=generator) < 0.2) * (0.75 + 0.25 * uniform(
        n, 1, 1, 1))
    moved = (moved + outside * bright).clamp(0, 1)
    clip = 0.15 * torch.rand(n, 2, generator=generator)
    clip[torch.rand(n, generator=generator) < 0.5] = 0
    # one sort of each image for both ends: row i of each half holds image i's own quantile
    bounds = torch.quantile(moved.flatten(1), torch.cat([clip[:, 0], 1 - clip[:, 1]]), dim=1)
    low, high = bounds[:n].diagonal(), bounds[n:].diagonal()
    width = (high - low).clamp(min=1e-3)[:, None, None, None]
    windowed = ((moved - low[:, None, None, None]) / width).clamp(0, 1)
    gamma = torch.exp(uniform(n, 1, 1, 1) * math.log(2))
    known = masks[:, 0, 0, 0].isfinite()
    out_masks = masks.clone()
    if known.any():
        out_masks[known] = (F.grid_sample(masks[known], grid[known], align_corners=False)
                            > 0.5).float()
    return windowed**gamma, out_masks


def _tiles(sources: Sequence[np.ndarray], picks: np.ndarray, size: int,
           rng: np.random.Generator, noise: float | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """A `size` tile of each picked image's own pixels (inside its middle, where the
    anatomy is) with Gaussian noise of `noise`, or of a random level in NOISE: (noisy,
    clean), (n, 1, size, size)."""
    noisy = np.zeros((len(picks), 1, size, size), np.float32)
    clean = np.zeros_like(noisy)
    for row, index in enumerate(picks):
        image = sources[int(index)].astype(np.float32) / 255
        y, x = (_start(n, size, rng) for n in image.shape)
        part = image[y:y + size, x:x + size]
        clean[row, 0, :part.shape[0], :part.shape[1]] = part
        sigma = noise if noise is not None else rng.uniform(*NOISE)
        # clipped as a received image's values are: [0, 1] is all the display range holds
        noisy[row, 0] = np.clip(clean[row, 0] + rng.normal(0, sigma, (size, size)), 0, 1)
    return noisy, clean


def _start(n: int, size: int, rng: np.random.Generator) -> int:
    """A tile's first row (or column) of `n`: inside the middle two thirds, where the anatomy
    is, where they hold a tile; anywhere else."""
    if n <= size:
        return 0
    low, high = n // 6, 5 * n // 6 - size
    if high < low:
        low, high = 0, n - size
    return int(rng.integers(low, high + 1))


def _negative(kind: str, data: _Split, size: int, rng: np.random.Generator) -> np.ndarray:
    """One image of class OTHER, (size, size) float32 in [0, 1]."""
    index = int(rng.integers(len(data.wholes)))
    whole = data.wholes[index, 0]
    if kind == "turned":  # on its side or upside down: not the view the masks know
        turned: np.ndarray = np.rot90(whole, int(rng.integers(1, 4))).copy()
        return turned
    if kind == "inverted":  # a negative: a photometric interpretation read the wrong way
        inverted: np.ndarray = 1 - whole
        return inverted
    if kind == "part":  # a part of the body fills the image (a shoulder, the abdomen...)
        source = data.sources[index].astype(np.float32) / 255
        h, w = source.shape
        side = int(min(h, w) * rng.uniform(0.25, 0.45))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        return _letterboxed(source[y:y + side, x:x + side], size)
    if kind == "drawn":  # turned any way: a hand or a limb has no up
        drawn: np.ndarray = np.rot90(data.drawn[int(rng.integers(len(data.drawn)))],
                                     int(rng.integers(4))).copy()
        return drawn
    if kind == "doppler":
        strip = make_doppler(int(rng.integers(2**31))).image.astype(np.float32) / 255
        return _letterboxed(strip, size)
    if kind == "graphic":
        return _graphic(size, rng)
    return _field(size, rng)


def _field(size: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth shading and noise, no anatomy at all."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    a, b, c = rng.uniform(-1, 1, 3)
    field = 0.5 + 0.3 * (a * yy + b * xx + c * yy * xx) + rng.normal(0, rng.uniform(0, 0.2),
                                                                    (size, size))
    flat: np.ndarray = np.clip(field, 0, 1).astype(np.float32)
    return flat


def _graphic(size: int, rng: np.random.Generator) -> np.ndarray:
    """A page or a screen: text, boxes and bars in any grey on a field. Without it the model
    found lungs either side of a heart in a real JPEG 2000 image of three words on grey
    (GDCMJ2K_TextGBR.dcm, 0.8.0). Drawn at up to 3x and letterboxed down: edges soft, as a
    received one's are once letterboxed."""
    side = int(size * rng.uniform(1, 3))
    canvas = _field(side, rng)
    for _ in range(int(rng.integers(2, 9))):
        value = float(rng.uniform(0, 1))
        y, x = (int(v) for v in rng.integers(0, side, 2))
        if rng.random() < 0.6:
            text = "".join(rng.choice(list(GLYPH_CHARS), int(rng.integers(2, 12))))
            scale = int(rng.integers(2, max(3, side // 24)))  # 2 at least, below 72 px too
            draw_text(canvas, text, y, x, scale=scale, value=value)
        else:  # a box, a bar: a window, a test pattern's grey step
            h, w = (int(v) for v in rng.integers(side // 32, side // 2, 2))
            canvas[y:y + h, x:x + w] = value
    return _letterboxed(canvas, size)
