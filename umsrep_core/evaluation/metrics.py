"""Evaluation metrics in plain numpy: Dice, ROC/AUC, PSNR, SSIM, measurement errors.

No scikit-learn or scipy: the product ships without them, and each metric is a few lines whose
definition the report must state anyway.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["abs_error", "auc", "auc_ovr", "dice", "psnr", "rel_error", "roc_curve", "ssim"]


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """2|P∩T| / (|P| + |T|) of two masks; 1.0 when both are empty (nothing to find, none found)."""
    p, t = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if p.shape != t.shape:
        raise ValueError(f"mask shapes differ: {p.shape} vs {t.shape}")
    total = int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else 2.0 * int((p & t).sum()) / total


def _binary(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    s, y = np.asarray(scores, dtype=float).ravel(), np.asarray(labels).ravel().astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores for {y.size} labels")
    return s, y


def auc(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Area under the ROC curve as the Mann-Whitney U statistic: the probability that a random
    positive scores above a random negative, ties counting one half. NaN when a class is absent
    (the AUC is undefined, and a report must say so rather than show 0 or 1)."""
    s, y = _binary(scores, labels)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=float)
    sorted_s = s[order]
    # Average ranks (1-based) over runs of equal scores.
    starts = np.flatnonzero(np.concatenate([[True], sorted_s[1:] != sorted_s[:-1]]))
    ends = np.concatenate([starts[1:], [s.size]])
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + 1 + end) / 2
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def auc_ovr(probs: np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Macro one-vs-rest AUC of (N, C) class probabilities; classes absent from `labels` are
    left out of the mean. NaN when no class is both present and absent."""
    p, y = np.asarray(probs, dtype=float), np.asarray(labels).ravel()
    values = [auc(p[:, c], y == c) for c in range(p.shape[1])]
    defined = [v for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else math.nan


def roc_curve(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates, thresholds), from (0, 0) at threshold +inf
    to (1, 1), one point per distinct score (predicted positive when score >= threshold)."""
    s, y = _binary(scores, labels)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_run = np.flatnonzero(np.concatenate([s[1:] != s[:-1], [True]]))
    tp = np.cumsum(y)[last_of_run]
    fp = np.cumsum(~y)[last_of_run]
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    fpr = np.concatenate([[0.0], fp / n_neg])
    tpr = np.concatenate([[0.0], tp / n_pos])
    return fpr, tpr, np.concatenate([[np.inf], s[last_of_run]])


def psnr(image: np.ndarray, reference: np.ndarray, data_range: float = 1.0) -> float:
    """10 log10(range² / MSE) in dB; +inf for identical images."""
    x, r = np.asarray(image, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if x.shape != r.shape:
        raise ValueError(f"image shapes differ: {x.shape} vs {r.shape}")
    mse = float(np.mean((x - r) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def _gaussian_valid(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Separable filtering with `window` along both axes, 'valid' mode (no padding)."""
    k = window.size
    rows = sum(w * image[i:image.shape[0] - k + 1 + i] for i, w in enumerate(window))
    return np.asarray(sum(w * rows[:, i:rows.shape[1] - k + 1 + i] for i, w in enumerate(window)))


def ssim(image: np.ndarray, reference: np.ndarray, data_range: float = 1.0, *,
         sigma: float = 1.5, size: int = 11) -> float:
    """Mean structural similarity (Wang et al. 2004): Gaussian window (sigma 1.5, 11 taps),
    K1 = 0.01, K2 = 0.03, statistics over the windows that fit inside the image."""
    # float32: a third of the time on a 3k image; the variances' rounding (about 1e-7 against
    # C2 = 9e-4) moves the index by about 1e-4, well below what a report shows.
    x, r = np.asarray(image, dtype=np.float32), np.asarray(reference, dtype=np.float32)
    if x.shape != r.shape or x.ndim != 2:
        raise ValueError(f"expected two equal 2-D images, got {x.shape} and {r.shape}")
    if min(x.shape) < size:
        raise ValueError(f"images of {x.shape} are smaller than the {size}-pixel window")
    taps = np.arange(size) - (size - 1) / 2
    window = np.exp(-(taps**2) / (2 * sigma**2))
    window = (window / window.sum()).astype(np.float32)
    mx, mr = _gaussian_valid(x, window), _gaussian_valid(r, window)
    vx = _gaussian_valid(x * x, window) - mx * mx
    vr = _gaussian_valid(r * r, window) - mr * mr
    cov = _gaussian_valid(x * r, window) - mx * mr
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    index = ((2 * mx * mr + c1) * (2 * cov + c2)) / ((mx**2 + mr**2 + c1) * (vx + vr + c2))
    return float(index.mean())


def abs_error(pred: float | None, truth: float | None) -> float | None:
    """|pred - truth|, None when either is missing (a missing value is reported, not scored)."""
    return None if pred is None or truth is None else abs(pred - truth)


def rel_error(pred: float | None, truth: float | None) -> float | None:
    """|pred - truth| / |truth|; None when either is missing or the truth is zero."""
    if pred is None or truth is None or truth == 0:
        return None
    return abs(pred - truth) / abs(truth)
