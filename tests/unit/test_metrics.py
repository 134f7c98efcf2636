"""Evaluation metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from umsrep_core.evaluation.metrics import (
    abs_error,
    auc,
    auc_ovr,
    dice,
    psnr,
    rel_error,
    roc_curve,
    ssim,
)


def test_dice() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[0, :3] = True  # 3 pixels
    b[0, 1:] = True  # 3 pixels, 2 shared
    assert dice(a, b) == pytest.approx(2 * 2 / 6)
    assert dice(a, a) == 1.0
    assert dice(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0  # nothing to find, none found
    assert dice(a, np.zeros((4, 4))) == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        dice(a, np.zeros((3, 3)))


def test_auc_by_hand() -> None:
    # positives 0.8, 0.4; negatives 0.6, 0.2: pairs (0.8>0.6, 0.8>0.2, 0.4<0.6, 0.4>0.2) = 3/4
    assert auc([0.8, 0.6, 0.4, 0.2], [1, 0, 1, 0]) == pytest.approx(0.75)
    assert auc([0.1, 0.9], [0, 1]) == 1.0
    assert auc([0.9, 0.1], [0, 1]) == 0.0
    assert auc([0.5, 0.5], [0, 1]) == 0.5  # a tie counts one half
    assert math.isnan(auc([0.1, 0.2], [1, 1]))  # undefined with one class


def test_auc_ovr_macro() -> None:
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    assert auc_ovr(probs, [0, 1, 2, 0]) == 1.0
    # class 2 absent: left out of the mean rather than NaN
    assert auc_ovr(probs[:2], [0, 1]) == 1.0


def test_roc_curve_points_and_area() -> None:
    scores, labels = [0.8, 0.6, 0.4, 0.2], [1, 0, 1, 0]
    fpr, tpr, thresholds = roc_curve(scores, labels)
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert thresholds[0] == np.inf and thresholds[1:].tolist() == [0.8, 0.6, 0.4, 0.2]
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(auc(scores, labels))


def test_psnr() -> None:
    ref = np.zeros((10, 10))
    img = ref + 0.1  # MSE 0.01 -> 20 dB at range 1
    assert psnr(img, ref) == pytest.approx(20.0)
    assert psnr(ref, ref) == math.inf


def test_ssim() -> None:
    rng = np.random.default_rng(0)
    ref = rng.random((32, 32))
    assert ssim(ref, ref) == pytest.approx(1.0)
    # A constant offset leaves contrast and structure alone: only the luminance term drops.
    # With constant images mean mu and mu + d: (2 mu (mu+d) + c1) / (mu² + (mu+d)² + c1).
    flat = np.full((16, 16), 0.5)
    c1 = 0.01**2
    expected = (2 * 0.5 * 0.6 + c1) / (0.5**2 + 0.6**2 + c1)
    assert ssim(flat + 0.1, flat) == pytest.approx(expected, abs=1e-3)  # computed in float32
    noisy = np.clip(ref + rng.normal(0, 0.3, ref.shape), 0, 1)
    assert ssim(noisy, ref) < 0.9


def test_errors() -> None:
    assert abs_error(0.45, 0.5) == pytest.approx(0.05)
    assert rel_error(95.0, 100.0) == pytest.approx(0.05)
    assert rel_error(1.0, 0.0) is None
    assert abs_error(None, 1.0) is None and rel_error(1.0, None) is None
