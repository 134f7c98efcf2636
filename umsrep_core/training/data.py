"""Training data: phantoms prepared as the Predictor sees them, in a pool renewed as it trains.

Each modality's phantoms come in two halves (see DENOISE_GRID): one as `Predictor` sees a
received image (a chest radiograph letterboxed, a Doppler strip cropped to its spectral region
and letterboxed), one with its noise on the model grid, as the denoiser sees a source tile.
Generating a phantom costs more than a training step, so a pool of them is renewed a little at
every step. The pool and its random generator are part of a checkpoint: a resumed run sees the
batches an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from umsrep_core.imaging.geometry import Letterbox
from umsrep_core.imaging.us import region_box
from umsrep_core.measure.chest import STRUCTURES
from umsrep_core.phantoms.chest import ChestPhantom, chest_with_noise
from umsrep_core.phantoms.doppler import DOPPLER_TYPES, add_speckle, make_doppler
from umsrep_core.pipelines import pipeline

__all__ = ["CHEST", "DENOISE_GRID", "NO_CLASS", "NO_TARGET", "Batch", "HeldOut", "PhantomPool",
           "chest_arrays", "chest_held_out", "corrupt", "doppler_arrays", "held_out_arrays",
           "phantom_arrays"]

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # images, clean, masks, labels
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
# The grid the denoising head works on (bundle manifest `denoise_grid`): the image's own, in
# tiles, so it learns noise as a source pixel carries it. A letterboxed image has its noise
# averaged by the downsizing, so half the phantoms (odd seeds) carry theirs on the model grid
# (a chest drawn at the model size with the detector's per-pixel noise, a Doppler strip
# speckled after letterboxing); the other half are what the whole-image pass of a received
# image sees, which the analysis heads must learn (a classifier trained only on the noisy half
# took smooth normal radiographs for abnormal). The denoiser is never served those: their
# clean image is NaN, no target (as an identity target, they taught it to leave noise be).
DENOISE_GRID = "source"
NO_TARGET = np.float32("nan")
# Class targets beside the class indices (radiographs.py): a chest radiograph whose class is
# unknown (scored on not being the last class, "other"), and no class target at all.
CHEST, NO_CLASS = -1, -2


def doppler_arrays(seeds: Iterable[int], size: int) -> Arrays:
    images, clean, masks, labels = [], [], [], []
    for seed in seeds:
        p = make_doppler(seed)
        crop = region_box(p.region) if p.region is not None else None
        box = Letterbox.fit(p.image.shape, size, crop=crop)
        clean_m = box.to_model(p.clean.astype(np.float32))
        if seed % 2:
            speckle = box.to_model(p.speckle.astype(np.float32)) > 0.5
            noisy = add_speckle(clean_m, np.random.default_rng(seed), p.speckle_strength)
            images.append(np.rint(np.where(speckle, noisy, clean_m) * 255) / 255)
            clean.append(clean_m)
        else:
            images.append(box.to_model(p.image.astype(np.float32) / 255.0))  # as read_frames
            clean.append(np.full_like(clean_m, NO_TARGET))
        masks.append(box.to_model(p.envelope.astype(np.float32)) > 0.5)
        labels.append(DOPPLER_TYPES.index(p.kind))
    return (_planes(images), _planes(clean), _planes(masks), np.array(labels, np.int64))


def _planes(planes: Sequence[np.ndarray]) -> np.ndarray:
    """(N, 1, H, W) float32 with the strides of a fresh array: a channel axis added by
    indexing has strides torch takes for channels-last, which rounds convolutions otherwise,
    so a resumed run (its pool copied back from a checkpoint) would drift from a whole one."""
    return np.stack(planes).astype(np.float32)[:, None].copy()


def chest_arrays(seeds: Iterable[int], size: int) -> Arrays:
    images, clean, masks, labels = [], [], [], []
    for seed in seeds:
        p, noisy = (chest_with_noise(seed, size=size) if seed % 2 else
                    chest_with_noise(seed, shrink_to=size))
        box = Letterbox.fit(noisy.shape, size)
        images.append(box.to_model(noisy))
        clean.append(box.to_model(p.clean) if seed % 2 else np.full((size, size), NO_TARGET))
        masks.append(_chest_masks(box, p))
        labels.append(int(p.abnormal))
    return _planes(images), _planes(clean), np.stack(masks), np.array(labels, np.int64)


def _chest_masks(box: Letterbox, phantom: ChestPhantom) -> np.ndarray:
    """(3, size, size) float32 0/1: the phantom's structures letterboxed."""
    return np.stack([box.to_model(phantom.masks[s].astype(np.float32)) > 0.5
                     for s in STRUCTURES]).astype(np.float32)


def phantom_arrays(modality: str, seeds: Iterable[int], size: int) -> Arrays:
    """The training phantoms of a modality's pipeline (umsrep_core.pipelines)."""
    return pipeline(modality).phantom_arrays(seeds, size)


class HeldOut(NamedTuple):
    """A run's validation data: the analysis arrays at the model size, and (noisy, clean)
    images of the model size on the grid the denoiser is served on."""

    images: np.ndarray
    clean: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    noisy_tiles: np.ndarray
    clean_tiles: np.ndarray


def held_out_arrays(modality: str, seeds: Iterable[int], size: int) -> HeldOut:
    """Held-out phantoms as a served bundle sees them, so that a run's validation scores as
    `evaluate` does (the modality's pipeline says how)."""
    return pipeline(modality).held_out_arrays(seeds, size)


def chest_held_out(seeds: Iterable[int], size: int) -> HeldOut:
    """Chest phantoms at their own sizes (1k-3k pixels), letterboxed as the Predictor does,
    and one tile of each on its own pixel grid (the bundle denoises in tiles there: a tile is
    smoother than a whole chest drawn at the model size)."""
    rows: list[tuple[Any, ...]] = []
    for seed in seeds:
        p, noisy = chest_with_noise(seed)
        box = Letterbox.fit(noisy.shape, size)
        h, w = noisy.shape
        rng = np.random.default_rng(seed)  # the tile, inside the middle half of the image
        y, x = (int(rng.integers(n // 4, 3 * n // 4 - size + 1)) for n in (h, w))
        rows.append((box.to_model(noisy), box.to_model(p.clean), _chest_masks(box, p),
                     int(p.abnormal), noisy[y:y + size, x:x + size].copy(),  # not views: each
                     p.clean[y:y + size, x:x + size].copy()))  # would hold its whole image
    shown, truth, structures, abnormal, noisy_tiles, clean_tiles = zip(*rows, strict=True)
    return HeldOut(_planes(shown), _planes(truth), np.stack(structures),
                   np.array(abnormal, np.int64), _planes(noisy_tiles), _planes(clean_tiles))


class PhantomPool:
    """`size` phantoms from seeds `first`...; every `renew_every` draws, `renew` of them are
    replaced by phantoms of unseen seeds, so a long run keeps seeing new cases."""

    def __init__(self, modality: str, *, first: int, size: int, image_size: int,
                 renew: int = 16, renew_every: int = 10, seed: int = 0) -> None:
        self.modality, self.image_size = modality, image_size
        self.renew, self.renew_every = min(renew, size), renew_every
        self.arrays = phantom_arrays(modality, range(first, first + size), image_size)
        self.next_seed = first + size
        self.draws = 0
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.arrays[0])

    def refresh_images(self, batch: int) -> np.ndarray:
        """The pool's images, (N, 1, size, size): what batch norms are refreshed over."""
        return self.arrays[0]

    def sample(self, batch: int) -> Batch:
        if self.draws and self.draws % self.renew_every == 0:
            fresh = phantom_arrays(self.modality, range(self.next_seed,
                                                        self.next_seed + self.renew),
                                   self.image_size)
            self.next_seed += self.renew
            slots = self.rng.choice(len(self), self.renew, replace=False)
            for array, new in zip(self.arrays, fresh, strict=True):
                array[slots] = new
        self.draws += 1
        pick = self.rng.choice(len(self), batch, replace=False)
        images, clean, masks, labels = (torch.from_numpy(a[pick]) for a in self.arrays)
        return images, clean, masks, labels

    def state_dict(self) -> dict[str, Any]:
        return {"arrays": [torch.from_numpy(a) for a in self.arrays],
                "next_seed": self.next_seed, "draws": self.draws,
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.arrays = tuple(t.numpy().copy() for t in state["arrays"])
        self.next_seed, self.draws = int(state["next_seed"]), int(state["draws"])
        self.rng.bit_generator.state = state["rng"]


def corrupt(images: torch.Tensor, generator: torch.Generator, *, noise: float = 0.08,
            patch: int = 8, masked: float = 0.25) -> torch.Tensor:
    """The pretext input of the unsupervised stage: `images` with added Gaussian noise and a
    fraction `masked` of `patch` x `patch` squares set to the image mean. Reconstructing the
    image from it needs only images: no masks, no labels, no clean reference. Filling a
    hidden square takes the anatomy around it, which is what the classifier fine-tuned on
    the encoder needs: on it the chest joint model met every gate at step 400, on a
    Noise2Void pretext (single pixels hidden, scored alone) at 600 and 700. Its decoder is
    not a denoiser of received images (chest PSNR gain -6.5 dB, the Noise2Void one's +6.2):
    fine-tuning teaches the denoising head on clean targets."""
    n, _, h, w = images.shape
    noisy = images + noise * torch.randn(images.shape, generator=generator)
    keep = torch.rand((n, 1, h // patch, w // patch), generator=generator) >= masked
    keep = keep.repeat_interleave(patch, 2).repeat_interleave(patch, 3)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return torch.where(keep, noisy, mean.expand_as(images))
