"""The one inference path: images (DICOM frames, PNG or arrays) -> every head -> source grid.

Each image is letterboxed to the bundle's input size (echo: the spectral region's box when the
image has one, since that is where the envelope and its calibration live), the encoder runs
ONCE for all heads, and every output is mapped back onto the source pixel grid with the exact
inverse of the letterbox, so that measurements use the source calibration (pixel spacing,
ultrasound region) unchanged. `umsrep model predict` and the workers both call this module.

Denoising restores pixels, so it works on the grid whose noise the bundle learned
(manifest `denoise_grid`): "model", the letterboxed image of that one pass; or "source", the
image's own pixels, in overlapping tiles of the input size (both packaged bundles: a
radiograph's per-pixel detector noise, a strip's speckle, which the downscale to the model
grid averages away and an upscale back cannot restore). The
fully convolutional encoder and its denoising decoder run over the tiles; the analysis heads
(segmentation, classification) keep the one whole-image pass. Callers that need no denoised
image leave the head out (`heads`), and the tiles are not computed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch

from umsrep_core.errors import InferenceError
from umsrep_core.imaging.geometry import Letterbox
from umsrep_core.imaging.pixels import LUMINANCE, read_frames
from umsrep_core.imaging.regions import SpectralRegion
from umsrep_core.imaging.us import region_box
from umsrep_core.models.bundle import OTHER_CLASS, Bundle
from umsrep_core.models.umsrep import for_inference
from umsrep_core.pipelines import pipeline
from umsrep_core.pipelines.base import Calibration, Spacing

__all__ = ["Frame", "Prediction", "Predictor", "default_device", "read_image_file", "synchronize"]

TILE_MARGIN = 16  # pixels of context around each denoising tile's kept centre


@dataclass
class Prediction:
    """One image's results, on its source pixel grid."""

    modality: str  # the bundle's pipeline (umsrep_core.pipelines)
    label: str | None  # None when the bundle has no classification head
    probability: float | None  # of `label`
    probabilities: dict[str, float]  # every class
    masks: dict[str, np.ndarray]  # seg label -> bool (rows, cols)
    denoised: np.ndarray | None  # float32 [0, 1] (rows, cols)
    measurements: dict[str, Any]  # the keys of `predict --json` for the modality
    reasons: list[str] = field(default_factory=list)  # why a value is null
    region: SpectralRegion | None = None  # echo: the calibration that was used
    not_applicable: str | None = None  # why the model does not know this image; None: it does

    def to_json(self) -> dict[str, Any]:
        """The object `umsrep model predict --json` prints for this image."""
        return {"modality": self.modality, "label": self.label,
                "probability": self.probability, **self.measurements,
                "reasons": list(self.reasons), "not_applicable": self.not_applicable}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously): before reading a clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def read_image_file(path: Path) -> np.ndarray:
    """A PNG (or other matplotlib-readable) file as float32 gray [0, 1] (Rec. 601 luminance)."""
    import matplotlib.image as mpimg  # noqa: PLC0415 - only image files need it

    try:
        arr = np.asarray(mpimg.imread(path))
    except (OSError, ValueError, SyntaxError) as exc:
        raise InferenceError(f"{path}: not a readable image ({exc})") from exc
    if arr.dtype.kind in "ui":  # JPEG etc. come as integers
        arr = arr / float(np.iinfo(arr.dtype).max)
    if arr.ndim == 3:
        arr = arr[..., :3] @ LUMINANCE if arr.shape[2] >= 3 else arr[..., 0]
    gray: np.ndarray = np.clip(arr, 0.0, 1.0).astype(np.float32)
    return gray


@dataclass
class Frame:
    """One frame to predict on: decoded, and calibrated for the bundle's modality."""

    image: np.ndarray  # float32 (rows, cols) in [0, 1]
    calibration: Calibration  # its notes: reasons known before the model runs


class Predictor:
    """A bundle's model ready to run: `predict_*` return one Prediction per image.

    `device`: None picks CUDA when present. `batch_size`: images per forward pass (the
    letterboxed inputs are stacked; each image still goes through the encoder exactly once).
    """

    def __init__(self, bundle: Bundle, device: str | None = None, batch_size: int = 4) -> None:
        self.bundle = bundle  # its manifest names the model and version in outputs
        self.device = torch.device(device or default_device())
        self.model = for_inference(bundle.model, self.device)
        self.modality = bundle.modality
        self.pipeline = pipeline(bundle.modality)  # what the modality knows
        self.heads = self.model.tasks
        self.denoise_grid = str(bundle.manifest.get("denoise_grid", "model"))
        self.size = bundle.config.input_size
        self.seg_labels = [str(s) for s in bundle.manifest["seg_labels"]]
        labels = [str(c) for c in bundle.manifest["class_labels"]]
        # The class OTHER_CLASS, where a bundle has it, is what the model does not know: its
        # probability says whether the image applies, the label is one of the others.
        self.other = labels.index(OTHER_CLASS) if OTHER_CLASS in labels else None
        self.class_labels = [c for c in labels if c != OTHER_CLASS]
        norm = bundle.manifest["normalisation"]
        self.mean, self.std = float(norm.get("mean", 0.0)), float(norm.get("std", 1.0))
        if not self.std > 0:
            raise InferenceError(f"bundle {bundle.path}: normalisation std {self.std} is not "
                                 "positive")
        self.batch_size = batch_size
        # Seconds of the last predict call: decoding and letterbox, the forward pass, mapping
        # back and measuring. The pipeline notes them as its stages.
        self.timings = {"preprocess": 0.0, "inference": 0.0, "postprocess": 0.0}

    # --- entry points -----------------------------------------------------------------------

    def predict_dicom(self, ds: pydicom.Dataset, heads: Sequence[str] | None = None
                      ) -> list[Prediction]:
        """One Prediction per frame of `ds`, with its pixel spacing or ultrasound region.
        `heads`: the heads to run (default: all the bundle has)."""
        started = time.perf_counter()
        frames = self.frames(ds)
        return self._run(frames, heads, decoding_s=time.perf_counter() - started)

    def frames(self, ds: pydicom.Dataset) -> list[Frame]:
        """The frames of `ds`, decoded, with the calibration of the bundle's modality. Raises
        InferenceError when its pixel data are missing or cannot be decoded."""
        calibration = self.pipeline.calibrate(ds)
        return [Frame(f, calibration) for f in read_frames(ds)]

    def predict_frames(self, frames: Sequence[Frame], heads: Sequence[str] | None = None
                       ) -> list[Prediction]:
        """One Prediction per frame, `batch_size` frames per forward pass. The caller decodes
        (`frames`) image by image: one that cannot be decoded fails alone, not its batch."""
        return self._run(list(frames), heads)

    def predict_array(self, image: np.ndarray, *, pixel_spacing: Spacing = None,
                      region: SpectralRegion | None = None,
                      heads: Sequence[str] | None = None) -> Prediction:
        """One (rows, cols) float image in [0, 1], bright = high signal."""
        return self.predict_batch([image], pixel_spacings=[pixel_spacing], regions=[region],
                                  heads=heads)[0]

    def predict_batch(self, images: Sequence[np.ndarray], *,
                      pixel_spacings: Sequence[Spacing] | None = None,
                      regions: Sequence[SpectralRegion | None] | None = None,
                      heads: Sequence[str] | None = None) -> list[Prediction]:
        """Several images, `batch_size` per forward pass, each through the encoder once."""
        n = len(images)
        spacings = list(pixel_spacings) if pixel_spacings is not None else [None] * n
        boxes = list(regions) if regions is not None else [None] * n
        if len(spacings) != n or len(boxes) != n:
            raise ValueError(f"{n} images, {len(spacings)} spacings, {len(boxes)} regions")
        inputs = [Frame(np.asarray(img, dtype=np.float32), Calibration(spacing=s, region=r))
                  for img, s, r in zip(images, spacings, boxes, strict=True)]
        return self._run(inputs, heads)

    def forward(self, x: np.ndarray, heads: Sequence[str] | None = None
                ) -> dict[str, np.ndarray]:
        """The heads' outputs (default all) for a batch of images (N, H, W) in [0, 1], H and W
        multiples of the config's stride, from ONE encoder pass: segmentation probabilities,
        class probabilities, denoised images."""
        tensor = (torch.from_numpy(x[:, None]).to(self.device) - self.mean) / self.std
        with torch.inference_mode():
            out = self.model(tensor, heads=self.heads if heads is None else heads)
        return {name: self._numpy(name, value) for name, value in out.items()}

    def denoise_tiles(self, image: np.ndarray, crop: tuple[int, int, int, int]) -> np.ndarray:
        """`image` denoised on its own pixel grid inside `crop` (y0, x0, y1, x1), tile by tile:
        tiles of the input size overlap by 2 * TILE_MARGIN pixels, and only their centres are
        kept, so that no tile edge shows. Outside the crop: the input, unchanged."""
        y0, x0, y1, x1 = crop
        core = self.size - 2 * TILE_MARGIN
        h, w = y1 - y0, x1 - x0
        rows, cols = -(-h // core), -(-w // core)
        padded = np.pad(image[y0:y1, x0:x1], ((TILE_MARGIN, rows * core - h + TILE_MARGIN),
                                              (TILE_MARGIN, cols * core - w + TILE_MARGIN)),
                        mode="reflect")
        starts = [(r * core, c * core) for r in range(rows) for c in range(cols)]
        out = np.empty((rows * core, cols * core), dtype=np.float32)
        step = 8 * self.batch_size  # tiles per forward pass
        for first in range(0, len(starts), step):
            chunk = starts[first:first + step]
            tiles = np.stack([padded[y:y + self.size, x:x + self.size] for y, x in chunk])
            clean = self.forward(tiles, heads=("denoise",))["denoise"][:, 0]
            for (y, x), tile in zip(chunk, clean, strict=True):
                out[y:y + core, x:x + core] = tile[TILE_MARGIN:-TILE_MARGIN,
                                                   TILE_MARGIN:-TILE_MARGIN]
        denoised = image.copy()
        denoised[y0:y1, x0:x1] = np.clip(out[:h, :w], 0, 1)
        return denoised

    # --- the pass ---------------------------------------------------------------------------

    def _run(self, inputs: list[Frame], heads: Sequence[str] | None,
             decoding_s: float = 0.0) -> list[Prediction]:
        wanted = tuple(self.heads if heads is None else heads)
        tiled = "denoise" in wanted and self.denoise_grid == "source"
        one_pass = tuple(h for h in wanted if not (tiled and h == "denoise"))
        timings = {"preprocess": decoding_s, "inference": 0.0, "postprocess": 0.0}
        out: list[Prediction] = []
        for start in range(0, len(inputs), self.batch_size):
            t0 = time.perf_counter()
            chunk = inputs[start:start + self.batch_size]
            boxes = [self._letterbox(item) for item in chunk]
            x = np.stack([box.to_model(item.image) for box, item in zip(boxes, chunk,
                                                                         strict=True)])
            t1 = time.perf_counter()
            arrays = self.forward(x, one_pass) if one_pass else {}
            denoised = [self.denoise_tiles(item.image, box.crop) if tiled else None
                        for item, box in zip(chunk, boxes, strict=True)]
            t2 = time.perf_counter()
            out += [self._prediction(item, box, {k: v[i] for k, v in arrays.items()},
                                     denoised[i])
                    for i, (item, box) in enumerate(zip(chunk, boxes, strict=True))]
            for stage, seconds in zip(timings, (t1 - t0, t2 - t1, time.perf_counter() - t2),
                                      strict=True):
                timings[stage] += seconds
        self.timings = timings
        return out

    def _numpy(self, head: str, value: torch.Tensor) -> np.ndarray:
        if head == "segment":
            value = torch.sigmoid(value)
        elif head == "classify":
            value = torch.softmax(value, dim=1)
        else:  # denoise: back to display units
            value = value * self.std + self.mean
        return value.float().cpu().numpy()

    def _letterbox(self, item: Frame) -> Letterbox:
        if item.image.ndim != 2:
            raise InferenceError(f"expected a 2-D grayscale image, got shape {item.image.shape}")
        region = item.calibration.region
        crop = region_box(region) if region is not None else None
        return Letterbox.fit(item.image.shape, self.size, crop=crop)

    def _prediction(self, item: Frame, box: Letterbox, heads: dict[str, np.ndarray],
                    denoised: np.ndarray | None) -> Prediction:
        """`denoised`: the image denoised on its own grid, or None (then from `heads`)."""
        reasons = list(item.calibration.notes)
        masks: dict[str, np.ndarray] = {}
        if "segment" in heads:
            back = box.mask_to_source(self.pipeline.clean_masks(heads["segment"]), threshold=0.5)
            masks = {name: back[i] for i, name in enumerate(self.seg_labels)}
        if "denoise" in heads:
            mapped = np.clip(box.mask_to_source(heads["denoise"][0], threshold=None), 0, 1)
            denoised = item.image.copy()  # outside an echo crop: the input, unchanged
            y0, x0, y1, x1 = box.crop
            denoised[y0:y1, x0:x1] = mapped[y0:y1, x0:x1]
        label, probability, probabilities = None, None, {}
        other = None
        if "classify" in heads:
            probs = heads["classify"]
            if self.other is not None:
                other = float(probs[self.other])
                probs = np.delete(probs, self.other)
                probs = probs / max(float(probs.sum()), 1e-12)
            probabilities = {name: float(p) for name, p in zip(self.class_labels, probs,
                                                                 strict=True)}
            best = int(np.argmax(probs))
            label, probability = self.class_labels[best], float(probs[best])
        else:
            reasons.append("no classification head was run: no label")
        not_applicable = self.pipeline.not_known(masks, other)
        if not_applicable is None:
            measurements = self.pipeline.measure(masks, label, item.calibration, reasons)
        else:  # nothing is measured, nor labelled, on an image the model does not know
            measurements = self.pipeline.measure({}, None, item.calibration, [])
            label, probability = None, None
            reasons.append(f"{not_applicable}: nothing measured")
        return Prediction(modality=self.modality, label=label, probability=probability,
                          probabilities=probabilities, masks=masks, denoised=denoised,
                          measurements=measurements, reasons=reasons,
                          region=item.calibration.region,
                          not_applicable=not_applicable)
