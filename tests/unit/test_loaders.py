"""Data set readers on tiny files written in the published layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from umsrep_core.data.loaders import (
    DataError,
    load_folder,
    load_jsrt,
    load_montgomery,
    load_shenzhen,
    open_dataset,
    read_image,
    split_lungs,
)
from umsrep_core.errors import UmsrepError


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _lungs(h: int = 40, w: int = 60) -> tuple[np.ndarray, np.ndarray]:
    right, left = np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)
    right[5:35, 5:25] = 255  # patient's right lung: image left
    left[5:30, 35:55] = 255
    return right, left


def _gradient(h: int = 40, w: int = 60) -> np.ndarray:
    return np.tile(np.linspace(0, 255, w).astype(np.uint8), (h, 1))


def _montgomery(root: Path) -> Path:
    right, left = _lungs()
    for name in ("MCUCXR_0001_0.png", "MCUCXR_0002_1.png"):
        _png(root / "CXR_png" / name, _gradient())
        _png(root / "ManualMask" / "rightMask" / name, right)
        _png(root / "ManualMask" / "leftMask" / name, left)
    return root


def test_montgomery_labels_masks_and_spacing(tmp_path: Path) -> None:
    ds = load_montgomery(_montgomery(tmp_path / "MontgomerySet"))
    assert len(ds) == 2 and ds.ids == ["MCUCXR_0001_0", "MCUCXR_0002_1"]
    a, b = list(ds)
    assert (a.label, b.label) == (0, 1)
    assert a.image.dtype == np.float32 and a.image.shape == (40, 60)
    assert a.image.min() == 0.0 and a.image.max() == 1.0
    assert set(a.masks) == {"right_lung", "left_lung"}
    assert a.masks["right_lung"].dtype == bool and a.masks["right_lung"].sum() == 30 * 20
    assert a.masks["left_lung"][:, :30].sum() == 0
    assert a.pixel_spacing_mm == 0.0875


def test_open_dataset_finds_a_set_one_level_down(tmp_path: Path) -> None:
    _montgomery(tmp_path / "MontgomerySet")
    ds = open_dataset(tmp_path)
    assert ds.name == "montgomery" and len(ds) == 2


def test_shenzhen_combined_mask_is_split_at_the_mediastinum(tmp_path: Path) -> None:
    right, left = _lungs()
    _png(tmp_path / "CXR_png" / "CHNCXR_0001_1.png", _gradient())
    _png(tmp_path / "CXR_png" / "CHNCXR_0002_0.png", _gradient())
    _png(tmp_path / "mask" / "CHNCXR_0001_1_mask.png", right | left)
    ds = open_dataset(tmp_path)
    assert ds.name == "shenzhen"
    with_mask, without = ds[0], ds[1]
    assert with_mask.label == 1 and without.label == 0
    np.testing.assert_array_equal(with_mask.masks["right_lung"], right > 0)
    np.testing.assert_array_equal(with_mask.masks["left_lung"], left > 0)
    assert without.masks == {} and without.pixel_spacing_mm is None
    assert load_shenzhen(tmp_path).ids == ds.ids


def test_split_lungs_keeps_every_pixel_once() -> None:
    mask = np.zeros((20, 30), bool)
    mask[2:18, 3:13] = mask[2:18, 16:27] = True
    right, left = split_lungs(mask)
    assert not (right & left).any() and ((right | left) == mask).all()
    assert right[:, 13:].sum() == 0 and left[:, :16].sum() == 0


def test_deep_png_is_scaled_by_the_bits_its_values_need(tmp_path: Path) -> None:
    twelve_bit = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 65).clip(0, 4095)
    twelve_bit[0, 0] = 4095
    path = _png(tmp_path / "deep.png", twelve_bit)
    image = read_image(path)
    assert image.max() == 1.0 and image[0, 1] == pytest.approx(65 / 4095)


def _jsrt(root: Path) -> None:
    raw = np.zeros((2048, 2048), ">u2")
    raw[:1024] = 4095  # stored high = dark
    (root / "All247images").mkdir(parents=True)
    raw.tofile(root / "All247images" / "JPCLN001.IMG")
    raw.tofile(root / "All247images" / "JPCNN002.IMG")
    heart = np.zeros((1024, 1024), np.uint8)
    heart[600:800, 400:700] = 255
    for structure in ("left lung", "right lung", "heart"):
        folder = root / "scr" / "masks" / structure
        folder.mkdir(parents=True)
        Image.fromarray(heart).save(folder / "JPCLN001.gif")


def test_jsrt_images_are_inverted_and_scr_masks_upsampled(tmp_path: Path) -> None:
    _jsrt(tmp_path)
    ds = open_dataset(tmp_path)
    assert ds.name == "jsrt" and ds.ids == ["JPCLN001", "JPCNN002"]
    nodule, normal = ds[0], ds[1]
    assert (nodule.label, normal.label) == (1, 0)
    assert nodule.image.shape == (2048, 2048)
    assert nodule.image[0, 0] == 0.0 and nodule.image[-1, -1] == 1.0
    assert set(nodule.masks) == {"right_lung", "left_lung", "heart"}
    heart = nodule.masks["heart"]
    assert heart.shape == (2048, 2048) and heart.sum() == 4 * 200 * 300
    assert heart[1200:1600, 800:1400].all()
    assert normal.masks == {} and nodule.pixel_spacing_mm == 0.175


def test_jsrt_file_of_the_wrong_size_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "JPCNN003.IMG").write_bytes(b"\0" * 100)
    ds = load_jsrt(tmp_path)
    with pytest.raises(DataError, match="bytes"):
        ds[0]


def test_generic_folder_with_masks_and_labels(tmp_path: Path) -> None:
    _png(tmp_path / "images" / "a.png", _gradient())
    _png(tmp_path / "images" / "b.png", _gradient())
    _png(tmp_path / "masks" / "heart" / "a.png", _lungs()[0])
    (tmp_path / "labels.csv").write_text("image,label\na.png,1\nb,\n")
    ds = open_dataset(tmp_path)
    assert ds.name == "folder" and len(ds) == 2
    a, b = ds
    assert a.label == 1 and b.label is None
    assert set(a.masks) == {"heart"} and a.masks["heart"].sum() == 600 and b.masks == {}
    assert load_folder(tmp_path).ids == ["a", "b"]


@pytest.mark.parametrize(("csv", "message"), [("name,label\na.png,1\n", "columns"),
                                              ("image,label\na.png,yes\n", "not an integer")])
def test_bad_labels_csv_is_a_data_error(tmp_path: Path, csv: str, message: str) -> None:
    _png(tmp_path / "images" / "a.png", _gradient())
    (tmp_path / "labels.csv").write_text(csv)
    with pytest.raises(DataError, match=message):
        load_folder(tmp_path)


def test_mask_of_another_size_is_a_data_error(tmp_path: Path) -> None:
    _png(tmp_path / "images" / "a.png", _gradient())
    _png(tmp_path / "masks" / "heart" / "a.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(DataError, match="mask heart"):
        load_folder(tmp_path)[0]


def test_unreadable_image_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="not a readable image"):
        load_folder(tmp_path)[0]


def test_folder_matching_no_layout_is_a_clear_umsrep_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="no known data set layout") as info:
        open_dataset(tmp_path)
    assert isinstance(info.value, UmsrepError)
    with pytest.raises(DataError, match="not a folder"):
        open_dataset(tmp_path / "missing")
    with pytest.raises(DataError, match="CXR_png"):
        load_montgomery(tmp_path)
