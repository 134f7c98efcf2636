"""Plausibility of chest masks and measurements: broad enough for every real chest (the SCR
reference masks of JSRT), strict enough for masks that are no chest at all."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from tests.conftest import shared_data
from umsrep_core.measure.chest import (
    STRUCTURES,
    largest_part_share,
    measure_chest,
    not_a_frontal_chest,
)
from umsrep_core.phantoms.chest import make_chest

SCR_SPACING_MM = 0.35  # the 2048 px films' 0.175 mm, resized to 1024 px
Masks = dict[str, np.ndarray]


def phantom_masks(seed: int = 0) -> Masks:
    return make_chest(seed, size=256).masks


def scr_cases() -> list[str]:
    """The SCR cases (skips the test without ../shared/data)."""
    return sorted(p.stem for p in (shared_data("jsrt-scr", "masks") / "heart").glob("*.png"))


def scr_masks(case: str) -> Masks:
    folder = shared_data("jsrt-scr", "masks")
    return {name: np.asarray(Image.open(folder / name / f"{case}.png")) > 127
            for name in STRUCTURES}


# --- what is wrong with a chest's masks --------------------------------------------------------


def swapped(m: Masks) -> Masks:
    return {**m, "right_lung": m["left_lung"], "left_lung": m["right_lung"]}


def mirrored(m: Masks) -> Masks:  # a flipped film: each lung on the other side
    return {name: mask[:, ::-1] for name, mask in m.items()}


def empty_left_lung(m: Masks) -> Masks:
    return {**m, "left_lung": np.zeros_like(m["left_lung"])}


def heart_in_the_corner(m: Masks) -> Masks:  # the right size, far from the mediastinum
    rows, cols = np.nonzero(m["heart"])
    heart = np.zeros_like(m["heart"])
    heart[rows - rows.min(), cols - cols.min()] = True
    return {**m, "heart": heart}


def heart_above_the_lungs(m: Masks) -> Masks:
    top = int(np.flatnonzero((m["right_lung"] | m["left_lung"]).any(axis=1))[0])
    heart = np.zeros_like(m["heart"])
    cols = np.flatnonzero(m["heart"].any(axis=0))
    heart[:max(top - 1, 1), cols[0]:cols[-1] + 1] = True
    return {**m, "heart": heart}


def heart_on_the_left_lung(m: Masks) -> Masks:
    rows, cols = np.nonzero(m["left_lung"])
    heart = np.zeros_like(m["heart"])
    r, c = int(rows.mean()), int(np.percentile(cols, 40))
    half = max(2, (cols.max() - cols.min()) // 5)
    heart[r - half:r + half, c - half:c + half] = True
    return {**m, "heart": heart}


def heart_wider_than_the_thorax(m: Masks) -> Masks:
    """On a canvas twice as wide, a band of the heart's middle rows across all of it."""
    w = m["heart"].shape[1]
    out = {name: np.pad(mask, ((0, 0), (w // 2, w // 2))) for name, mask in m.items()}
    rows = np.flatnonzero(m["heart"].any(axis=1))
    third = (rows[-1] - rows[0]) // 3
    out["heart"][rows[0] + third:rows[-1] - third, :] = True
    return out


def lungs_in_patches(m: Masks) -> Masks:
    """Each lung cut by a grid of lines into tiles, as a model that sees no lung draws it."""
    grid = np.ones(m["heart"].shape, bool)
    step = max(m["heart"].shape) // 12
    grid[::step] = grid[:, ::step] = False
    thick = grid & np.roll(grid, 1, 0) & np.roll(grid, 1, 1) & np.roll(grid, 2, 0) \
        & np.roll(grid, 2, 1)
    return {**m, "right_lung": m["right_lung"] & thick, "left_lung": m["left_lung"] & thick}


def random_blobs(m: Masks, seed: int = 0) -> Masks:
    rng = np.random.default_rng(seed)
    h, w = m["heart"].shape
    yy, xx = np.mgrid[:h, :w]
    out = {}
    for name in STRUCTURES:
        mask = np.zeros((h, w), bool)
        for _ in range(6):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.03, 0.08) * h
            mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        out[name] = mask
    return out


def speckle(m: Masks, seed: int = 0) -> Masks:
    rng = np.random.default_rng(seed)
    return {name: rng.random(mask.shape) < 0.2 for name, mask in m.items()}


WRONG: dict[str, tuple[Callable[[Masks], Masks], str]] = {
    "swapped sides": (swapped, "the lungs are on the wrong sides"),
    "mirrored film": (mirrored, "the lungs are on the wrong sides"),
    "empty left lung": (empty_left_lung, "the left lung covers 0.0% of the image"),
    "heart in the corner": (heart_in_the_corner, "the heart's centre is not between the lungs"),
    "heart above the lungs": (heart_above_the_lungs, "the heart shares no row with"),
    "heart on the left lung": (heart_on_the_left_lung, "of the heart lies on the lungs"),
    "heart wider than the thorax": (heart_wider_than_the_thorax, "outside the thorax"),
    "lungs in patches": (lungs_in_patches, "lung is in pieces"),
    "random blobs": (random_blobs, "is in pieces"),
    "speckle": (speckle, "is in pieces"),
}


@pytest.mark.parametrize("seed", range(8))
def test_phantom_reference_masks_are_a_frontal_chest(seed: int) -> None:
    masks = phantom_masks(seed)
    assert not_a_frontal_chest(masks) is None
    m = measure_chest(masks, make_chest(seed, size=256).pixel_spacing_mm)
    assert m.ctr is not None and m.reasons == []


@pytest.mark.parametrize("wrong", WRONG)
def test_wrong_masks_are_no_frontal_chest_and_say_why(wrong: str) -> None:
    change, why = WRONG[wrong]
    reason = not_a_frontal_chest(change(phantom_masks(3)))
    assert reason is not None and why in reason, reason


def test_a_missing_mask_is_no_frontal_chest() -> None:
    masks = phantom_masks()
    del masks["heart"]
    assert not_a_frontal_chest(masks) == "no heart mask"


def test_every_scr_reference_chest_is_plausible_and_measured() -> None:
    cases = scr_cases()
    assert len(cases) == 200
    rejected = {}
    for case in cases:
        masks = scr_masks(case)
        m = measure_chest(masks, SCR_SPACING_MM)
        why = not_a_frontal_chest(masks)
        if why is not None or m.ctr is None or m.reasons:
            rejected[case] = why or m.reasons
    assert rejected == {}


@pytest.mark.parametrize("wrong", WRONG)
def test_wrong_scr_masks_are_no_frontal_chest(wrong: str) -> None:
    change, why = WRONG[wrong]
    for case in scr_cases()[::40]:  # 5 cases, nodules and not
        reason = not_a_frontal_chest(change(scr_masks(case)))
        assert reason is not None and why in reason, (case, reason)


# --- measurements outside physiological ranges -------------------------------------------------


def test_ctr_outside_the_physiological_range_is_not_reported() -> None:
    masks = phantom_masks()
    m = measure_chest(heart_wider_than_the_thorax(masks), 1.0)
    [reason] = m.reasons
    assert m.ctr is None and reason.startswith("CTR ")
    assert float(reason.split()[1]) > 1.2
    assert reason.endswith("is outside the physiological range 0.25-0.85: CTR not reported")
    narrow = dict(masks)
    cols = np.flatnonzero(masks["heart"].any(axis=0))
    narrow["heart"] = masks["heart"].copy()
    narrow["heart"][:, cols[0] + 3:] = False  # a 3-pixel-wide heart
    m = measure_chest(narrow, 1.0)
    assert m.ctr is None and any(r.startswith("CTR 0.0") for r in m.reasons)


@pytest.mark.parametrize(("spacing", "word"), [(0.01, "under"), (10.0, "over")])
def test_areas_of_a_wrong_pixel_spacing_are_not_reported(spacing: float, word: str) -> None:
    m = measure_chest(phantom_masks(), spacing)  # 256 px: 2.6 mm or 2.6 m across
    assert m.areas_mm2 == dict.fromkeys(STRUCTURES)
    assert m.ctr is not None  # the CTR needs no spacing
    assert len(m.reasons) == 3 and all("is the pixel spacing right?" in r for r in m.reasons)


# --- connected parts -----------------------------------------------------------------------


def test_largest_part_share_counts_corners_and_pixels() -> None:
    mask = np.zeros((40, 40), bool)
    mask[2:12, 2:12] = True  # 100 pixels
    mask[12:17, 12:17] = True  # 25, touching the first at a corner only: one part
    mask[30:35, 30:35] = True  # 25 apart
    assert largest_part_share(mask) == pytest.approx(125 / 150)
    assert largest_part_share(np.zeros((5, 5), bool)) == 0.0


def test_largest_part_share_of_a_large_mask_on_pooled_cells() -> None:
    mask = np.zeros((2000, 1500), bool)
    mask[100:900, 100:700] = True
    mask[100:900, 703:1300] = True  # a 3-pixel gap, under one 8-pixel cell: one part
    assert largest_part_share(mask) > 0.97  # less the edge cells under half full
    mask[950:1900, :] = True  # a larger part, far apart
    assert largest_part_share(mask) == pytest.approx(950 * 1500 / mask.sum(), abs=0.01)
    fine = np.random.default_rng(0).random((2000, 1500)) < 0.3  # finer than a cell: no part
    assert largest_part_share(fine) < 0.01
