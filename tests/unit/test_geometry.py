"""umsrep_core.imaging.geometry: letterbox to the model and back, exactly."""

from __future__ import annotations

import numpy as np
import pytest

from umsrep_core.imaging.geometry import Letterbox

SHAPES = [(301, 177), (177, 301), (513, 513), (100, 37), (64, 300), (50, 70), (1023, 1), (3, 2)]


def ellipse(shape: tuple[int, int], box: tuple[float, float, float, float] = (0.2, 0.15, 0.8, 0.7)
            ) -> np.ndarray:
    """A filled ellipse inside the fractional box (y0, x0, y1, x1) of `shape`."""
    rows, cols = shape
    y, x = np.mgrid[0:rows, 0:cols]
    cy, cx = (box[0] + box[2]) / 2 * rows, (box[1] + box[3]) / 2 * cols
    ry, rx = (box[2] - box[0]) / 2 * rows, (box[3] - box[1]) / 2 * cols
    return bool_array(((y + 0.5 - cy) / ry) ** 2 + ((x + 0.5 - cx) / rx) ** 2 <= 1)


def bool_array(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=bool)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


@pytest.mark.parametrize("shape", SHAPES)
def test_fit_keeps_the_aspect_and_centres(shape: tuple[int, int]) -> None:
    lb = Letterbox.fit(shape, 256)
    nh, nw = lb.content
    scale = 256 / max(shape)
    assert max(nh, nw) == 256
    assert nh == max(1, round(shape[0] * scale)) and nw == max(1, round(shape[1] * scale))
    assert lb.pad == ((256 - nh) // 2, (256 - nw) // 2)
    assert lb.to_model(np.ones(shape, np.float32)).shape == (256, 256)


@pytest.mark.parametrize("shape", SHAPES)
def test_corners_and_points_map_exactly(shape: tuple[int, int]) -> None:
    lb = Letterbox.fit(shape, 128)
    (py, px), (nh, nw) = lb.pad, lb.content
    # The content's outer edges (pixel centres at integers, edges at -0.5) are the source's.
    assert lb.point_to_source(py - 0.5, px - 0.5) == pytest.approx((-0.5, -0.5), abs=1e-9)
    assert lb.point_to_source(py + nh - 0.5, px + nw - 0.5) == pytest.approx(
        (shape[0] - 0.5, shape[1] - 0.5), abs=1e-9)
    for y, x in [(0, 0), (shape[0] - 1, shape[1] - 1), (shape[0] / 3, shape[1] * 0.7)]:
        assert lb.point_to_source(*lb.point_to_model(y, x)) == pytest.approx((y, x), abs=1e-9)


@pytest.mark.parametrize("shape", SHAPES[:6])
def test_source_mask_round_trip(shape: tuple[int, int]) -> None:
    lb = Letterbox.fit(shape, 128)
    mask = ellipse(shape)
    back = lb.mask_to_source(lb.to_model(mask) >= 0.5)
    assert back.shape == shape and back.dtype == bool
    assert dice(mask, back) > 0.97
    # a rectangle of odd size, away from the border
    rect = np.zeros(shape, bool)
    rect[shape[0] // 5: shape[0] * 4 // 5 + 1, shape[1] // 7: shape[1] * 6 // 7 + 1] = True
    assert dice(rect, lb.mask_to_source(lb.to_model(rect) >= 0.5)) > 0.97


@pytest.mark.parametrize("shape", [(301, 177), (177, 301), (50, 70)])
def test_model_mask_maps_back_consistently(shape: tuple[int, int]) -> None:
    lb = Letterbox.fit(shape, 128)
    (py, px), (nh, nw) = lb.pad, lb.content
    drawn = np.zeros((128, 128), bool)
    drawn[py:py + nh, px:px + nw] = ellipse((nh, nw), (0.1, 0.3, 0.9, 0.8))
    source = lb.mask_to_source(drawn)
    assert dice(drawn, lb.to_model(source) >= 0.5) > 0.97
    # probabilities threshold like the mask they come from; None keeps them
    prob = drawn.astype(np.float32)
    np.testing.assert_array_equal(lb.mask_to_source(prob), source)
    soft = lb.mask_to_source(prob, threshold=None)
    assert soft.dtype == np.float32 and soft.min() >= 0.0 and soft.max() <= 1.0 + 1e-6


def test_full_content_mask_covers_the_whole_source() -> None:
    for shape in SHAPES:
        lb = Letterbox.fit(shape, 64)
        (py, px), (nh, nw) = lb.pad, lb.content
        full = np.zeros((64, 64), bool)
        full[py:py + nh, px:px + nw] = True
        assert lb.mask_to_source(full).all(), shape
        assert not lb.to_model(np.ones(shape))[~full].any()  # padding stays zero


def test_channels_are_resampled_together() -> None:
    lb = Letterbox.fit((90, 60), 64)
    stack = np.stack([ellipse((90, 60)), ~ellipse((90, 60))]).astype(np.float32)
    model = lb.to_model(stack)
    assert model.shape == (2, 64, 64)
    assert lb.mask_to_source(model).shape == (2, 90, 60)


def test_intensity_is_preserved() -> None:
    img = np.linspace(0, 1, 400 * 300, dtype=np.float32).reshape(400, 300)
    lb = Letterbox.fit(img.shape, 100)
    (py, px), (nh, nw) = lb.pad, lb.content
    content = lb.to_model(img)[py:py + nh, px:px + nw]
    assert content.mean() == pytest.approx(img.mean(), abs=2e-3)
    assert content.min() >= 0 and content.max() <= 1


def test_crop_to_a_region() -> None:
    img = np.zeros((600, 800), np.float32)
    img[300:580, 20:780] = np.linspace(0, 1, 760, dtype=np.float32)
    crop = (300, 20, 580, 780)
    lb = Letterbox.fit(img.shape, 256, crop=crop)
    np.testing.assert_allclose(lb.to_model(img), Letterbox.fit((280, 760), 256).to_model(
        img[300:580, 20:780]), atol=1e-6)
    assert lb.point_to_source(lb.pad[0] - 0.5, lb.pad[1] - 0.5) == pytest.approx((299.5, 19.5))
    back = lb.mask_to_source(np.ones((256, 256), bool))
    assert back.shape == (600, 800)
    assert back[300:580, 20:780].all() and back.sum() == 280 * 760


@pytest.mark.parametrize("crop", [(0, 0, 0, 5), (10, 0, 5, 5), (0, 0, 601, 10), (-1, 0, 5, 5)])
def test_bad_crops_are_refused(crop: tuple[int, int, int, int]) -> None:
    with pytest.raises(ValueError, match="crop"):
        Letterbox.fit((600, 800), 256, crop=crop)


def test_wrong_shapes_are_refused() -> None:
    lb = Letterbox.fit((90, 60), 64)
    with pytest.raises(ValueError, match="source"):
        lb.to_model(np.zeros((60, 90)))
    with pytest.raises(ValueError, match="model"):
        lb.mask_to_source(np.zeros((90, 60)))
