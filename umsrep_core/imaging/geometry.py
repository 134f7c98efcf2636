"""Letterbox: (crop,) resize and pad an image to a square model input, and map back exactly.

Coordinates are continuous with pixel centres at integers (pixel (0, 0) covers [-0.5, 0.5)).
The content (the crop, or the whole image) of h x w pixels is resampled to nh x nw model pixels,
nh = round(h * s), nw = round(w * s), s = size / max(h, w), and placed at (pad_y, pad_x). Each
axis has its own exact scale nh / h and nw / w, so the content's edges fall on model pixel edges
and the inverse maps them back onto the source pixel edges, with no drift from rounding s.
Resampling is bilinear with antialiasing when shrinking (a triangle filter over the covered
source pixels, in the spirit of area averaging), on the same centre convention (torch's
align_corners=False with an explicit output size).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Letterbox"]


@dataclass(frozen=True)
class Letterbox:
    shape: tuple[int, int]  # source (rows, columns)
    size: int  # model side
    crop: tuple[int, int, int, int]  # (y0, x0, y1, x1) half-open, in source pixels
    content: tuple[int, int]  # (nh, nw): the content's size at model scale
    pad: tuple[int, int]  # (pad_y, pad_x): the content's top-left corner in the model image

    @classmethod
    def fit(cls, shape: tuple[int, int], size: int,
            crop: tuple[int, int, int, int] | None = None) -> Letterbox:
        """The letterbox of a `shape` image (or its half-open `crop` box) in `size` x `size`."""
        rows, cols = int(shape[0]), int(shape[1])
        y0, x0, y1, x1 = crop if crop is not None else (0, 0, rows, cols)
        if size < 1 or rows < 1 or cols < 1:
            raise ValueError(f"cannot letterbox a {rows}x{cols} image into {size}x{size}")
        if not (0 <= y0 < y1 <= rows and 0 <= x0 < x1 <= cols):
            raise ValueError(f"crop {(y0, x0, y1, x1)} is empty or outside the {rows}x{cols} "
                             "image")
        h, w = y1 - y0, x1 - x0
        scale = size / max(h, w)
        nh, nw = max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))
        return cls(shape=(rows, cols), size=size, crop=(y0, x0, y1, x1), content=(nh, nw),
                   pad=((size - nh) // 2, (size - nw) // 2))

    @property
    def scale(self) -> tuple[float, float]:
        """Model pixels per source pixel, (rows, columns)."""
        y0, x0, y1, x1 = self.crop
        return self.content[0] / (y1 - y0), self.content[1] / (x1 - x0)

    def to_model(self, img: np.ndarray) -> np.ndarray:
        """(..., rows, cols) source array -> (..., size, size) float32, padded with zeros."""
        y0, x0, y1, x1 = self.crop
        self._check(img, self.shape, "source")
        content = _resize(img[..., y0:y1, x0:x1], self.content)
        out = np.zeros((*img.shape[:-2], self.size, self.size), dtype=np.float32)
        (py, px), (nh, nw) = self.pad, self.content
        out[..., py:py + nh, px:px + nw] = content
        return out

    def mask_to_source(self, mask_or_prob: np.ndarray, threshold: float | None = 0.5
                       ) -> np.ndarray:
        """(..., size, size) mask or probabilities -> (..., rows, cols) on the source grid.

        Resampled as probabilities, then thresholded (`threshold` None: the probabilities),
        so a mask drawn at model size maps back to the same shape. Outside the crop: 0.
        """
        self._check(mask_or_prob, (self.size, self.size), "model")
        (py, px), (nh, nw) = self.pad, self.content
        y0, x0, y1, x1 = self.crop
        back = _resize(mask_or_prob[..., py:py + nh, px:px + nw].astype(np.float32),
                       (y1 - y0, x1 - x0))
        if threshold is not None:
            back = back >= threshold
        if (y1 - y0, x1 - x0) == self.shape:  # no crop: no canvas to fill (full-size copies)
            return back
        out = np.zeros((*mask_or_prob.shape[:-2], *self.shape), dtype=back.dtype)
        out[..., y0:y1, x0:x1] = back
        return out

    def point_to_source(self, y: float, x: float) -> tuple[float, float]:
        """A model-image point (row, column) -> the same point in source pixels."""
        (sy, sx), (py, px) = self.scale, self.pad
        return ((y - py + 0.5) / sy - 0.5 + self.crop[0],
                (x - px + 0.5) / sx - 0.5 + self.crop[1])

    def point_to_model(self, y: float, x: float) -> tuple[float, float]:
        """A source point (row, column) -> the same point in the model image."""
        (sy, sx), (py, px) = self.scale, self.pad
        return ((y - self.crop[0] + 0.5) * sy - 0.5 + py,
                (x - self.crop[1] + 0.5) * sx - 0.5 + px)

    @staticmethod
    def _check(arr: np.ndarray, expected: tuple[int, int], what: str) -> None:
        if arr.ndim < 2 or tuple(arr.shape[-2:]) != expected:
            raise ValueError(f"expected a {what} array ending in {expected}, got {arr.shape}")


def _resize(arr: np.ndarray, out: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of the last two axes to `out` (antialiased when shrinking)."""
    if tuple(arr.shape[-2:]) == out:
        return arr.astype(np.float32)
    lead = arr.shape[:-2]
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).reshape(-1, 1,
                                                                             *arr.shape[-2:])
    shrink = out[0] < arr.shape[-2] or out[1] < arr.shape[-1]
    with torch.no_grad():
        res = F.interpolate(t, size=out, mode="bilinear", align_corners=False, antialias=shrink)
    return res.reshape(*lead, *out).numpy()
