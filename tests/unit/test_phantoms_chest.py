"""Chest X-ray phantoms: ground truth consistent with the image and with the measurements."""

from __future__ import annotations

import numpy as np
import pytest

from umsrep_core.measure.chest import STRUCTURES, measure_chest
from umsrep_core.phantoms.chest import (
    FINDINGS,
    ChestPhantom,
    add_xray_noise,
    chest_with_noise,
    make_chest,
)

SIZE = 128
AIR = 0.08  # clean display value above which a pixel is inside the body (air is 0.03)


@pytest.fixture(scope="module")
def phantoms() -> list[ChestPhantom]:
    return [make_chest(seed, size=SIZE) for seed in range(16)]


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    out = mask.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out |= np.roll(np.roll(mask, dy, axis=0), dx, axis=1)
    return out


def test_masks_have_the_structures_and_the_image_shape(phantoms: list[ChestPhantom]) -> None:
    for p in phantoms:
        assert list(p.masks) == list(STRUCTURES)
        for mask in p.masks.values():
            assert mask.dtype == bool
            assert mask.shape == p.image.shape == p.clean.shape == (SIZE, SIZE)


def test_masks_are_non_empty_and_mutually_exclusive(phantoms: list[ChestPhantom]) -> None:
    for p in phantoms:
        stack = np.stack([p.masks[name] for name in STRUCTURES])
        assert stack.sum(axis=(1, 2)).min() > 50
        assert stack.sum(axis=0).max() == 1


def test_masks_lie_inside_the_body_with_a_margin(phantoms: list[ChestPhantom]) -> None:
    for p in phantoms:
        union = p.masks["right_lung"] | p.masks["left_lung"] | p.masks["heart"]
        assert (p.clean[_dilate(union, 2)] > AIR).all()
        assert not union[[0, -1]].any() and not union[:, [0, -1]].any()


def test_right_lung_is_on_the_image_left_and_heart_between(phantoms: list[ChestPhantom]
                                                           ) -> None:
    cols = np.arange(SIZE)
    for p in phantoms:
        centre = {k: (m.sum(axis=0) * cols).sum() / m.sum() for k, m in p.masks.items()}
        assert centre["right_lung"] < centre["heart"] < centre["left_lung"]
        assert centre["heart"] > SIZE / 2 - 4  # mostly left of the patient's midline


def test_lungs_are_darker_than_heart_in_the_clean_image(phantoms: list[ChestPhantom]) -> None:
    for p in phantoms:
        lungs = p.clean[p.masks["right_lung"] | p.masks["left_lung"]].mean()
        assert lungs + 0.2 < p.clean[p.masks["heart"]].mean()


def test_ctr_equals_the_measurement_from_the_masks(phantoms: list[ChestPhantom]) -> None:
    for p in phantoms:
        measured = measure_chest(p.masks, p.pixel_spacing_mm)
        assert measured.ctr == p.ctr
        assert measured.reasons == []


def test_cardiomegaly_ctr_above_half_normal_below() -> None:
    seen = set()
    for seed in range(40):
        p = make_chest(seed, size=96, abnormal=seed % 2 == 0)
        big = "cardiomegaly" in p.findings
        seen.add(big)
        assert (p.ctr > 0.5) if big else (0.36 < p.ctr < 0.5), (seed, p.findings, p.ctr)
    assert seen == {True, False}


def test_findings_follow_the_abnormal_flag() -> None:
    for seed in range(10):
        normal = make_chest(seed, size=64, abnormal=False)
        assert not normal.abnormal and normal.findings == ()
        sick = make_chest(seed, size=64, abnormal=True)
        assert sick.abnormal and 1 <= len(sick.findings) <= 2
        assert set(sick.findings) <= set(FINDINGS)
        assert all(type(f) is str for f in sick.findings)


def test_monochrome1_is_the_inverse_of_monochrome2() -> None:
    m1 = make_chest(3, size=SIZE, photometric="MONOCHROME1")
    m2 = make_chest(3, size=SIZE, photometric="MONOCHROME2")
    assert m1.bits_stored == m2.bits_stored
    top = 2 ** m1.bits_stored - 1
    np.testing.assert_array_equal(m1.image.astype(int), top - m2.image.astype(int))
    np.testing.assert_array_equal(m1.clean, m2.clean)
    lungs = m1.masks["right_lung"] | m1.masks["left_lung"]
    assert m1.image[lungs].mean() > m1.image[m1.masks["heart"]].mean()  # high = dark
    assert m2.image[lungs].mean() < m2.image[m2.masks["heart"]].mean()


def test_stored_values_fit_the_bits_stored(phantoms: list[ChestPhantom]) -> None:
    assert {p.photometric for p in phantoms} == {"MONOCHROME1", "MONOCHROME2"}
    for p in phantoms:
        assert p.image.dtype == np.uint16
        assert 12 <= p.bits_stored <= 16
        assert int(p.image.max()) < 2 ** p.bits_stored
        assert int(p.image.max()) - int(p.image.min()) > 2 ** (p.bits_stored - 2)


def test_image_is_the_clean_one_with_noise(phantoms: list[ChestPhantom]) -> None:
    for p in phantoms:
        assert p.clean.dtype == np.float32
        assert p.clean.min() >= 0 and p.clean.max() <= 1
        display = p.image.astype(float)
        if p.photometric == "MONOCHROME1":
            display = -display
        assert np.corrcoef(display.ravel(), p.clean.ravel())[0, 1] > 0.9
        display = (display - display.min()) / np.ptp(display)
        assert np.abs(display - p.clean).mean() > 0.005  # noisy, not a copy


def test_same_seed_same_phantom_other_seed_other_phantom() -> None:
    a, b, c = make_chest(7, size=96), make_chest(7, size=96), make_chest(8, size=96)
    np.testing.assert_array_equal(a.image, b.image)
    for name in STRUCTURES:
        np.testing.assert_array_equal(a.masks[name], b.masks[name])
    assert (a.ctr, a.findings, a.photometric) == (b.ctr, b.findings, b.photometric)
    assert not np.array_equal(a.clean, c.clean)


def test_full_size_phantom_has_a_detector_size_and_spacing() -> None:
    p = make_chest(5)
    h, w = p.image.shape
    assert 1024 <= h <= 3072 and 0.8 * h <= w <= h
    assert 0.1 < p.pixel_spacing_mm < 0.45
    assert measure_chest(p.masks, p.pixel_spacing_mm).ctr == p.ctr


def test_invalid_photometric_is_refused() -> None:
    with pytest.raises(ValueError, match="photometric"):
        make_chest(0, size=64, photometric="RGB")


def test_xray_noise_is_poisson_like_and_falls_with_dose() -> None:
    clean = np.tile(np.linspace(0, 1, 256, dtype=np.float32), (256, 1))
    rng = np.random.default_rng(0)
    low, high = add_xray_noise(clean, rng, 100.0), add_xray_noise(clean, rng, 10000.0)
    assert low.dtype == np.float32 and low.min() >= 0 and low.max() <= 1
    err_low, err_high = np.abs(low - clean).mean(), np.abs(high - clean).mean()
    assert err_high < err_low / 5
    dense, light = np.abs(low - clean)[:, 200:].mean(), np.abs(low - clean)[:, 20:60].mean()
    assert dense > light  # fewer photons through dense regions
    assert abs(float((high - clean)[:, 20:200].mean())) < 0.005  # unbiased where counts allow
    again = add_xray_noise(clean, np.random.default_rng(0), 100.0)
    np.testing.assert_array_equal(low, again)


def test_a_shrunk_radiograph_is_the_same_case_with_averaged_noise() -> None:
    full, full_noisy = chest_with_noise(5)
    small, small_noisy = chest_with_noise(5, shrink_to=128)
    assert small_noisy.shape[0] == 128 and small.image.shape == small_noisy.shape
    assert small_noisy.shape[1] == round(full_noisy.shape[1] * 128 / full_noisy.shape[0])
    assert (small.abnormal, small.findings, small.photometric) == \
        (full.abnormal, full.findings, full.photometric)
    assert abs(small.ctr - full.ctr) < 0.02
    drawn_small, drawn_noisy = chest_with_noise(5, size=128)
    # k*k source pixels in one: far less noise than a phantom drawn at that size
    assert np.abs(small_noisy - small.clean).mean() < np.abs(drawn_noisy - drawn_small.clean
                                                             ).mean() / 4
