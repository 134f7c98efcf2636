"""Data set readers on tiny files written in the published layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import shared_data
from umsrep_core.data.loaders import (
    DataError,
    is_validation,
    load_folder,
    load_jsrt,
    load_montgomery,
    load_shenzhen,
    open_dataset,
    read_image,
    split,
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


def _jsrt_scr(root: Path) -> Path:
    right, left = _lungs()
    cases = []
    for name in ("JPCLN001", "JPCNN002"):
        _png(root / "images" / f"{name}.png", _gradient())
        _png(root / "masks" / "right_lung" / f"{name}.png", right)
        _png(root / "masks" / "left_lung" / f"{name}.png", left)
        _png(root / "masks" / "heart" / f"{name}.png", right[::-1])
        cases.append({"case": name, "nodule": name.startswith("JPCLN"), "ctr": 0.5})
    (root / "cases.json").write_text(json.dumps(cases))
    return root


def test_the_shared_jsrt_scr_layout(tmp_path: Path) -> None:
    ds = open_dataset(_jsrt_scr(tmp_path / "jsrt-scr"))
    assert ds.name == "jsrt-scr" and ds.ids == ["JPCLN001", "JPCNN002"]
    sample = ds[0]
    assert set(sample.masks) == {"right_lung", "left_lung", "heart"}
    np.testing.assert_array_equal(sample.masks["right_lung"], _lungs()[0] > 0)
    # JSRT's finding is a nodule, which is not what the classifier tells
    assert sample.label is None and sample.pixel_spacing_mm == 0.35
    assert ds.patients == ds.ids


def test_the_shared_nih_layout_keeps_patients_for_the_split(tmp_path: Path) -> None:
    rows = [{"file": f"0000000{p}_00{k}.png", "patient": f"0000000{p}",
             "label": "pneumonia" if k else "normal"} for p in range(3) for k in range(2)]
    for row in rows:
        _png(tmp_path / "images" / row["file"], _gradient())
    (tmp_path / "labels.json").write_text(json.dumps(rows))
    ds = open_dataset(tmp_path)
    assert ds.name == "nih-cxr8" and len(ds) == 6
    assert [ds[i].label for i in range(2)] == [0, 1] and ds[0].masks == {}
    assert ds[1].patient == "00000000" and ds.patients[2:4] == ["00000001"] * 2
    rows[0]["label"] = "effusion"
    (tmp_path / "labels.json").write_text(json.dumps(rows))
    with pytest.raises(DataError, match="effusion"):
        open_dataset(tmp_path)


def test_a_patient_is_on_one_side_of_the_split_whatever_the_folder_holds(tmp_path: Path) -> None:
    ids = [f"p{k}" for k in range(200)]
    ds = load_folder(_folder_of(tmp_path, ids[:3]))
    validation = split(ds, "validation")
    assert len(validation) + len(split(ds, "train")) == len(ds) and split(ds, "all") is ds
    # a fifth of patients, chosen by name alone
    assert 0.12 < np.mean([is_validation(i) for i in ids]) < 0.28
    assert validation.ids == [i for i in ds.ids if is_validation(i)]
    with pytest.raises(DataError, match="split 'test'"):
        split(ds, "test")


def _folder_of(root: Path, names: list[str]) -> Path:
    for name in names:
        _png(root / "images" / f"{name}.png", _gradient())
    return root


@pytest.mark.parametrize(("folder", "count", "labelled"), [("jsrt-scr", 200, 0),
                                                            ("nih-cxr8", 797, 797)])
def test_the_shared_real_data_sets_read_whole(folder: str, count: int, labelled: int) -> None:
    ds = open_dataset(shared_data(folder))
    assert len(ds) == count
    train, validation = split(ds, "train"), split(ds, "validation")
    assert not set(train.patients) & set(validation.patients)
    assert 0.12 < len(validation) / count < 0.28
    sample = validation[0]
    assert sample.image.dtype == np.float32 and 0 <= sample.image.min() < sample.image.max() <= 1
    assert (sample.label is not None) == bool(labelled)
    if folder == "jsrt-scr":
        assert all(m.shape == sample.image.shape and m.any() for m in sample.masks.values())
        assert len(sample.masks) == 3
