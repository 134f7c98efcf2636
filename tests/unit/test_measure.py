"""Measurements from masks (chest) and envelopes (Doppler), edge cases included."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from umsrep_core.imaging.regions import SpectralRegion
from umsrep_core.measure import measure_chest, measure_doppler
from umsrep_core.measure.doppler import complete_beats, envelope_trace


def _chest_masks() -> dict[str, np.ndarray]:
    masks = {name: np.zeros((80, 100), bool) for name in ("right_lung", "left_lung", "heart")}
    masks["right_lung"][10:60, 10:40] = True  # 50 x 30
    masks["left_lung"][10:50, 60:90] = True  # 40 x 30
    masks["heart"][40:70, 35:65] = True  # 30 x 30, overlap allowed here
    return masks


def test_ctr_is_heart_width_over_thoracic_width() -> None:
    m = measure_chest(_chest_masks(), 2.0)  # 2 mm pixels: a 16 x 20 cm picture
    assert m.ctr == pytest.approx(30 / 80)
    assert m.areas_mm2 == {"right_lung": 1500 * 4, "left_lung": 1200 * 4, "heart": 900 * 4}
    assert m.reasons == []


def test_thoracic_width_uses_rows_holding_both_lungs() -> None:
    masks = _chest_masks()
    masks["right_lung"][55:60, 2:10] = True  # wider, but below the left lung's last row
    assert measure_chest(masks, 1.0).ctr == pytest.approx(30 / 80)


def test_anisotropic_spacing_multiplies_row_and_column() -> None:
    m = measure_chest(_chest_masks(), (2.0, 3.0))
    assert m.areas_mm2["heart"] == pytest.approx(900 * 6)
    assert m.ctr == pytest.approx(30 / 80)  # columns only: no spacing involved


@pytest.mark.parametrize("spacing", [None, 0.0, (0.0, 0.0), (0.3, 0.0), -1.0, math.nan,
                                     math.inf])
def test_missing_or_invalid_spacing_gives_null_areas_with_a_reason(
        spacing: float | tuple[float, float] | None) -> None:
    m = measure_chest(_chest_masks(), spacing)
    assert m.areas_mm2 == {"right_lung": None, "left_lung": None, "heart": None}
    assert m.ctr == pytest.approx(30 / 80)
    assert len(m.reasons) == 1 and "spacing" in m.reasons[0]


@pytest.mark.parametrize("empty", ["heart", "right_lung", "left_lung"])
def test_empty_mask_gives_null_ctr_with_a_reason(empty: str) -> None:
    masks = _chest_masks()
    masks[empty][:] = False
    m = measure_chest(masks, 1.0)
    assert m.ctr is None and any("CTR not measured" in r for r in m.reasons)
    assert m.areas_mm2[empty] is None  # no organ measures 0 mm2
    assert any(r.startswith(f"{empty.replace('_', ' ')} area 0 mm2 is outside")
               for r in m.reasons)


def test_lungs_without_a_common_row_and_missing_masks() -> None:
    masks = _chest_masks()
    masks["left_lung"][:] = False
    masks["left_lung"][65:75, 60:90] = True
    assert measure_chest(masks, 1.0).ctr is None
    partial = {"heart": _chest_masks()["heart"]}
    m = measure_chest(partial, 1.0)
    assert m.ctr is None and m.areas_mm2["right_lung"] is None and m.areas_mm2["heart"] == 900
    assert "right_lung mask missing" in m.reasons


def test_masks_of_different_shapes_are_refused() -> None:
    masks = _chest_masks()
    masks["heart"] = np.zeros((10, 10), bool)
    with pytest.raises(ValueError, match="shapes"):
        measure_chest(masks, 1.0)


def test_chest_to_json_has_exactly_the_keys() -> None:
    js = measure_chest(_chest_masks(), None).to_json()
    assert set(js) == {"ctr", "areas_mm2", "reasons"}
    assert js["areas_mm2"]["heart"] is None and isinstance(js["reasons"], list)


# Doppler: region rows 0..99 with the baseline at row 60, 1 cm/s and 10 ms per pixel.
REGION = SpectralRegion(x0=10, y0=0, x1=109, y1=99, ref_x=0, ref_y=60, delta_x=0.01,
                        delta_y=-1.0)


def _envelope(velocity: np.ndarray, region: SpectralRegion = REGION) -> np.ndarray:
    """Rasterise a per-column velocity (cm/s) the way the phantoms do, without wrapping."""
    rows = np.arange(region.y1 - region.y0 + 1)[:, None]
    vel = (rows - region.ref_y) * region.delta_y
    same = vel * np.sign(velocity)[None, :] > 0
    env = np.zeros((region.y1 + 1, region.x1 + 5), bool)
    env[region.y0:region.y1 + 1, region.x0:region.x1 + 1] = same & (
        np.abs(vel) <= np.abs(velocity)[None, :])
    return env


def _beats(*pulses: tuple[int, int, float]) -> np.ndarray:
    """A trace of triangular pulses: (start column, length, peak cm/s)."""
    v = np.zeros(100)
    for start, length, peak in pulses:
        segment = v[start:start + length]  # a view: pulses may run off the strip
        segment[:] = (peak * (1 - np.abs(np.linspace(-1, 1, length + 2)[1:-1])))[:segment.size]
    return v


def test_peak_and_vti_from_a_rasterised_envelope() -> None:
    v = _beats((5, 21, 40.0), (40, 21, 44.0), (85, 21, 50.0))  # the last runs off the strip
    m = measure_doppler(_envelope(v), REGION, "lvot_outflow")
    assert m.peak_velocity_cm_s == pytest.approx(50.5)  # outer edge of the 50 cm/s pixel
    trace = envelope_trace(_envelope(v), REGION)
    assert np.abs(trace - v).max() <= 0.5 + 1e-9
    expected = np.mean([np.abs(trace[5:26]).sum(), np.abs(trace[40:61]).sum()]) * 0.01
    assert m.vti_cm == pytest.approx(expected)
    assert m.e_cm_s is None and "mitral inflow only" in m.reasons[-1]


def test_negative_flow_is_measured_below_the_baseline() -> None:
    v = -_beats((10, 31, 35.0), (50, 31, 35.0))
    env = _envelope(v)
    assert not env[:60].any() and env[61:].any()
    m = measure_doppler(env, REGION, "tricuspid_regurgitation")
    assert m.peak_velocity_cm_s == pytest.approx(35.5)
    assert m.vti_cm == pytest.approx(np.abs(envelope_trace(env, REGION))[10:41].sum() * 0.01)


def test_aliased_column_is_unwrapped_by_the_span() -> None:
    env = np.zeros((100, 120), bool)
    env[0:60, 50] = True  # attached above the baseline up to the top edge (60 cm/s)
    env[90:100, 50] = True  # detached tip at the bottom: wrapped from beyond the top
    trace = envelope_trace(env, REGION)
    # the tip (row 90) is row 90 - 100 = -10 unwrapped: 70 rows from the baseline, + 0.5 edge
    assert trace[40] == pytest.approx(70.5)
    env2 = np.zeros((100, 120), bool)
    env2[61:100, 50] = True  # attached below, to the bottom edge
    env2[0:5, 50] = True  # tip wrapped to the top: row 4 + 100 = 104
    assert envelope_trace(env2, REGION)[40] == pytest.approx(-44.5)


def test_e_and_a_of_mitral_inflow() -> None:
    v = np.zeros(100)
    for start in (10, 55):
        t = np.arange(30)
        v[start:start + 30] = np.maximum(80 * np.exp(-((t - 7) / 4.0) ** 2),
                                         50 * np.exp(-((t - 22) / 3.0) ** 2)) + 5
    coarse = SpectralRegion(x0=10, y0=0, x1=109, y1=99, ref_x=0, ref_y=60, delta_x=0.01,
                            delta_y=-2.0)  # 120 cm/s above the baseline
    m = measure_doppler(_envelope(v, coarse), coarse, "mitral_inflow")
    assert m.e_cm_s == pytest.approx(80 + 5, abs=1.0)
    assert m.a_cm_s == pytest.approx(50 + 5, abs=1.0)
    assert m.e_cm_s is not None and m.a_cm_s is not None
    assert m.e_a_ratio == pytest.approx(m.e_cm_s / m.a_cm_s)
    assert m.reasons == []


def test_fused_e_and_a_give_no_ratio_with_a_reason() -> None:
    m = measure_doppler(_envelope(_beats((10, 31, 50.0), (50, 31, 50.0))), REGION,
                        "mitral_inflow")
    assert m.e_cm_s is None and m.e_a_ratio is None and m.vti_cm is not None
    assert any("E/A not measured" in r for r in m.reasons)


def test_beats_touching_the_strip_edges_are_incomplete() -> None:
    v = _beats((0, 20, 30.0), (85, 15, 30.0))
    assert complete_beats(v, 0.01) == []
    m = measure_doppler(_envelope(v), REGION, "lvot_outflow")
    assert m.peak_velocity_cm_s is not None and m.vti_cm is None
    assert any("no complete beat" in r for r in m.reasons)


def test_short_gaps_are_closed_and_specks_ignored() -> None:
    v = _beats((10, 30, 40.0))
    v[24] = 0.0  # a one-column (10 ms) hole inside a beat
    v[60:62] = 3.0  # a 2-column speck
    assert complete_beats(v, 0.01) == [slice(10, 40)]


@pytest.mark.parametrize("kind", ["not_doppler", "mitral_inflow"])
def test_no_region_or_not_doppler_gives_nulls_with_a_reason(kind: str) -> None:
    env = _envelope(_beats((10, 20, 30.0)))
    m = measure_doppler(env, None, kind)
    assert (m.peak_velocity_cm_s, m.e_cm_s, m.a_cm_s, m.e_a_ratio, m.vti_cm) == (None,) * 5
    assert len(m.reasons) == 1


def test_empty_envelope_bad_region_and_unknown_kind() -> None:
    m = measure_doppler(np.zeros((100, 120), bool), REGION, "lvot_outflow")
    assert m.peak_velocity_cm_s is None and "empty" in m.reasons[0]
    outside = SpectralRegion(x0=10, y0=0, x1=500, y1=99, ref_x=0, ref_y=60, delta_x=0.01,
                             delta_y=-1.0)
    assert "outside" in measure_doppler(np.zeros((100, 120), bool), outside,
                                        "lvot_outflow").reasons[0]
    flat = SpectralRegion(x0=10, y0=0, x1=109, y1=99, ref_x=0, ref_y=60, delta_x=0.01,
                          delta_y=0.0)
    assert "scale" in measure_doppler(np.zeros((100, 120), bool), flat,
                                      "lvot_outflow").reasons[0]
    with pytest.raises(ValueError, match="kind"):
        measure_doppler(np.zeros((100, 120), bool), REGION, "colour")


@pytest.mark.parametrize(("cm_s_per_px", "peak"), [(-20.0, "810"), (-0.1, "4")])
def test_a_peak_outside_the_physiological_range_gives_nothing(cm_s_per_px: float,
                                                                 peak: str) -> None:
    # The same 40-pixel beats at 20 cm/s a pixel (a peak of 810 cm/s) and at 0.1 (4 cm/s).
    region = dataclasses.replace(REGION, delta_y=cm_s_per_px)
    v = _beats((10, 31, 40.0), (50, 31, 40.0)) * abs(cm_s_per_px)
    m = measure_doppler(_envelope(v, region), region, "mitral_inflow")
    assert (m.peak_velocity_cm_s, m.e_cm_s, m.a_cm_s, m.e_a_ratio, m.vti_cm) == (None,) * 5
    assert m.reasons == [f"peak velocity {peak} cm/s is outside the physiological range 5-700 "
                         "cm/s (is the envelope or the velocity scale wrong?): nothing measured"]
    within = dataclasses.replace(REGION, delta_y=-15.0)  # 600 cm/s: a severe stenosis' jet
    fast = measure_doppler(_envelope(v / abs(cm_s_per_px) * 15, within), within, "lvot_outflow")
    assert fast.peak_velocity_cm_s == pytest.approx(607.5)


@pytest.mark.parametrize("bad", [{"delta_y": math.nan}, {"delta_x": math.inf},
                                 {"delta_x": math.nan}, {"delta_y": -math.inf}])
def test_a_calibration_that_is_not_finite_gives_nothing(bad: dict[str, float]) -> None:
    region = dataclasses.replace(REGION, **bad)
    m = measure_doppler(_envelope(_beats((10, 31, 40.0))), region, "lvot_outflow")
    assert m.peak_velocity_cm_s is None and m.vti_cm is None
    assert m.reasons == ["the spectral region has no time or velocity scale: nothing measured"]


def test_doppler_to_json_has_exactly_the_keys() -> None:
    js = measure_doppler(np.zeros((100, 120), bool), None, "lvot_outflow").to_json()
    assert set(js) == {"peak_velocity_cm_s", "e_cm_s", "a_cm_s", "e_a_ratio", "vti_cm",
                       "reasons"}
