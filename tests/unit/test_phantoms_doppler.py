"""Spectral Doppler phantoms: ground truth consistent with the envelope and the measurements."""

from __future__ import annotations

import numpy as np
import pytest

from umsrep_core.measure.doppler import measure_doppler
from umsrep_core.phantoms.doppler import (
    DOPPLER_TYPES,
    DopplerPhantom,
    add_speckle,
    doppler_batch,
    make_doppler,
)

SPECTRAL = DOPPLER_TYPES[:3]


@pytest.fixture(scope="module")
def strips() -> list[DopplerPhantom]:
    return [make_doppler(seed, kind=kind) for seed in range(12) for kind in SPECTRAL]


def test_types_are_the_published_labels_in_order() -> None:
    assert DOPPLER_TYPES == ("mitral_inflow", "lvot_outflow", "tricuspid_regurgitation",
                             "not_doppler")


def test_measurements_on_the_envelope_match_the_ground_truth(strips: list[DopplerPhantom]
                                                             ) -> None:
    for p in strips:
        m = measure_doppler(p.envelope, p.region, p.kind)
        assert p.region is not None and p.peak_velocity_cm_s is not None
        assert m.peak_velocity_cm_s is not None
        half_px = 0.5 * abs(p.region.delta_y) + 1e-9  # the rasterisation bound
        assert m.peak_velocity_cm_s == pytest.approx(p.peak_velocity_cm_s, rel=0.01)
        assert abs(m.peak_velocity_cm_s - p.peak_velocity_cm_s) <= half_px
        assert m.vti_cm == p.vti_cm and p.vti_cm is not None and p.vti_cm > 2
        if p.kind == "mitral_inflow":
            assert p.e_cm_s and p.a_cm_s and p.e_a_ratio and m.e_cm_s and m.a_cm_s
            assert abs(m.e_cm_s - p.e_cm_s) <= half_px and abs(m.a_cm_s - p.a_cm_s) <= half_px
            assert m.e_a_ratio == pytest.approx(p.e_a_ratio, rel=0.03)
            assert p.e_a_ratio == pytest.approx(p.e_cm_s / p.a_cm_s)
        else:
            assert (p.e_cm_s, p.a_cm_s, p.e_a_ratio) == (None, None, None)
            assert (m.e_cm_s, m.a_cm_s, m.e_a_ratio) == (None, None, None)


def test_velocity_ranges_and_directions(strips: list[DopplerPhantom]) -> None:
    for p in strips:
        assert p.region is not None and p.peak_velocity_cm_s is not None
        baseline = p.region.baseline_row
        above, below = p.envelope[:baseline].sum(), p.envelope[baseline + 1:].sum()
        assert not p.envelope[baseline].any()
        if p.kind == "mitral_inflow":
            assert above > 0 and (below == 0 or p.aliased)
            assert 30 < p.peak_velocity_cm_s < 130
        else:
            assert below > 0 and (above == 0 or p.aliased)
        if p.kind == "tricuspid_regurgitation":
            assert 250 <= p.peak_velocity_cm_s <= 500
            assert p.region.data_type == 4 and not p.aliased
        else:
            assert p.region.data_type == 3


def test_envelope_and_region_calibration(strips: list[DopplerPhantom]) -> None:
    for p in strips:
        r = p.region
        assert r is not None
        assert r.delta_y < 0 < r.delta_x and r.ref_x == 0
        outside = p.envelope.copy()
        outside[r.y0:r.y1 + 1, r.x0:r.x1 + 1] = False
        assert not outside.any()
        assert p.image.dtype == np.uint8 and p.image.shape == p.envelope.shape == (256, 512)
        # the spectrum is brighter inside the envelope than in the empty part of the region
        region = np.zeros_like(p.envelope)
        region[r.y0:r.y1 + 1, r.x0:r.x1 + 1] = True
        assert p.clean[p.envelope].mean() > 3 * p.clean[region & ~p.envelope].mean()


def test_aliased_strips_wrap_and_still_measure_the_true_peak() -> None:
    found = 0
    for seed in range(40):
        for kind in ("mitral_inflow", "lvot_outflow"):
            p = make_doppler(seed, kind=kind)
            if not p.aliased:
                continue
            found += 1
            r = p.region
            assert r is not None and p.peak_velocity_cm_s is not None
            edge = max(abs(r.velocity_cm_s(r.y0)), abs(r.velocity_cm_s(r.y1)))
            assert p.peak_velocity_cm_s > edge  # beyond the scale: it had to wrap
            cols = p.envelope[:, r.x0:r.x1 + 1]
            b = r.baseline_row
            assert (cols[:b].any(axis=0) & cols[b + 1:].any(axis=0)).any()
            m = measure_doppler(p.envelope, r, kind)
            assert m.peak_velocity_cm_s == pytest.approx(p.peak_velocity_cm_s, rel=0.01)
            assert m.vti_cm == p.vti_cm
    assert found >= 5


def test_not_doppler_has_no_envelope_region_or_values() -> None:
    for seed in range(6):
        p = make_doppler(seed, kind="not_doppler")
        assert not p.envelope.any() and p.region is None and not p.aliased
        assert (p.peak_velocity_cm_s, p.e_cm_s, p.a_cm_s, p.e_a_ratio, p.vti_cm) == (None,) * 5
        assert p.image.std() > 10  # an image, not a blank
        assert measure_doppler(p.envelope, p.region, p.kind).peak_velocity_cm_s is None


def test_size_is_configurable_and_too_small_is_refused() -> None:
    p = make_doppler(1, kind="lvot_outflow", height=200, width=400)
    assert p.image.shape == p.clean.shape == (200, 400)
    m = measure_doppler(p.envelope, p.region, p.kind)
    assert m.peak_velocity_cm_s == pytest.approx(p.peak_velocity_cm_s, rel=0.02)
    with pytest.raises(ValueError, match="at least"):
        make_doppler(1, height=32, width=64)
    with pytest.raises(ValueError, match="kind"):
        make_doppler(1, kind="colour_flow")


def test_deterministic_by_seed_and_kinds_drawn_from_all_types() -> None:
    a, b = make_doppler(4), make_doppler(4)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.envelope, b.envelope)
    assert a.kind == b.kind and a.region == b.region
    assert {make_doppler(s).kind for s in range(30)} == set(DOPPLER_TYPES)


def test_image_is_the_clean_one_with_speckle(strips: list[DopplerPhantom]) -> None:
    for p in strips[:6]:
        assert p.clean.dtype == np.float32 and p.clean.min() >= 0 and p.clean.max() <= 1
        r = p.region
        assert r is not None
        inner = (slice(r.y0, r.y1 + 1), slice(r.x0, r.x1 + 1))
        noisy, clean = p.image[inner] / 255.0, p.clean[inner]
        assert np.abs(noisy - clean).mean() > 0.03
        assert np.corrcoef(noisy.ravel(), clean.ravel())[0, 1] > 0.5
        # speckle where the phantom says, and nowhere else (8-bit quantisation aside)
        assert p.speckle[inner].mean() > 0.9 and 0.45 <= p.speckle_strength <= 0.9
        outside = ~p.speckle
        assert np.abs(p.image[outside] / 255.0 - p.clean[outside]).max() <= 0.5 / 255 + 1e-6


def test_add_speckle_keeps_the_mean_and_its_strength_orders_the_noise() -> None:
    clean = np.full((100, 200), 0.4, np.float32)
    weak = add_speckle(clean, np.random.default_rng(0), 0.2)
    strong = add_speckle(clean, np.random.default_rng(0), 0.9)
    assert weak.dtype == np.float32 and strong.min() >= 0 and strong.max() <= 1
    assert weak.std() < strong.std()
    assert abs(weak.mean() - 0.4) < 0.05


def test_doppler_batch_stacks_training_arrays() -> None:
    seeds = list(range(8))
    batch = doppler_batch(seeds, 128, 256)
    assert batch["images"].shape == batch["clean"].shape == batch["masks"].shape
    assert batch["images"].shape == (8, 1, 128, 256)
    for i, seed in enumerate(seeds):
        p = make_doppler(seed, height=128, width=256)
        assert batch["labels"][i] == DOPPLER_TYPES.index(p.kind)
        np.testing.assert_array_equal(batch["masks"][i, 0], p.envelope)
        np.testing.assert_array_equal(batch["images"][i, 0], p.image / np.float32(255))
        peak = batch["peak_velocity_cm_s"][i]
        assert np.isnan(peak) if p.peak_velocity_cm_s is None else peak == np.float32(
            p.peak_velocity_cm_s)
