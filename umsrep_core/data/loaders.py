"""Readers of public chest X-ray data sets in their published layouts, and of a generic folder.

Every reader returns a lazy `Dataset` of `Sample`s: `image` float32 in [0, 1], display-oriented
(bright = dense); `masks` bool, the image's shape, keyed by structure (right_lung, left_lung,
heart; possibly none); `label` 1 abnormal / 0 normal / None unknown; `id`; the patient (for
splits that keep a patient's images together; the id where a data set has one image per
patient); pixel spacing where the data set documents one. "right" is always the patient's right
(the image left in a PA view). `split(dataset, "validation")` is the fixed fifth of patients
that training holds out.

Layouts (as published; a reader also accepts the data set's folder one level down):
- Montgomery County (NLM): `CXR_png/MCUCXR_0001_0.png` (suffix _0 normal, _1 tuberculosis),
  `ManualMask/leftMask/<same name>` and `ManualMask/rightMask/<same name>`, 0/255 PNGs the
  image's size; leftMask is the patient's left lung. Pixel spacing 0.0875 mm.
- Shenzhen (NLM): `CXR_png/CHNCXR_0001_0.png` (same suffix); the lung masks published later
  (one mask for both lungs) in `mask/` (or `masks/`) as `CHNCXR_0001_0_mask.png`. The combined
  mask is split into right and left at the mediastinal gap (the emptiest column of the middle
  third of the image). Pixel spacing varies and is not published per image: None.
- JSRT + SCR: `*.IMG` anywhere below the root (JPCLN### with a nodule: label 1; JPCNN###
  without: label 0), headerless 2048 x 2048 big-endian 16-bit words holding 12-bit values where
  a HIGH value is DARK (so they are inverted here), 0.175 mm pixels. SCR masks: folders named
  `left lung`, `right lung`, `heart` anywhere below the root (as in `scr/masks/<structure>/` or
  the per-fold `fold1/masks/<structure>/`), `<id>.gif` at 1024 x 1024, upsampled here by
  pixel repetition to the image grid.
- JSRT + SCR as shared for this project (`jsrt-scr/`): `images/JPC*.png` (1024 px, 8-bit,
  display orientation), `masks/{right_lung,left_lung,heart}/<same name>` (0/255), and
  `cases.json` ([{"case", "nodule", "ctr"}]). 0.35 mm pixels (the 0.175 mm films halved). The
  label is None: JSRT's finding is a nodule, not what the classifier tells (normal or
  pneumonia); `nodule` is kept in the sample's `findings`.
- NIH ChestX-ray8 as shared for this project (`nih-cxr8/`): `images/*.png` (512 px, 8-bit) and
  `labels.json` ([{"file", "patient", "label": "normal" | "pneumonia"}]): label 0 or 1, the
  patient kept for splits. Pixel spacing not published per image: None.
- Generic folder: `images/<name>.<png|jpg|gif|tif>`, `masks/<structure>/<name>.png` (any
  structure names; the stem must match), optional `labels.csv` with columns image,label
  (image: the file name, with or without extension; label: an integer or empty).
PNG/GIF/JPEG are read with Pillow (installed with matplotlib). 8-bit images are scaled by 255;
deeper ones by 2**bits - 1, bits being the depth their largest value needs (12-bit data
stored in 16-bit PNGs keep their contrast). Mask files are foreground where above half their
maximum.
"""

from __future__ import annotations

import csv
import json
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from umsrep_core.errors import UmsrepError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".tif", ".tiff", ".bmp")
JSRT_SHAPE = (2048, 2048)
JSRT_SPACING_MM = 0.175
SCR_PNG_SPACING_MM = 0.35  # the shared jsrt-scr PNGs: 2048 px films at 1024
SPLITS = ("train", "validation", "all")
MONTGOMERY_SPACING_MM = 0.0875
_SCR_STRUCTURES = {"right lung": "right_lung", "left lung": "left_lung", "heart": "heart"}
_LABEL_SUFFIX = re.compile(r"_([01])$")


class DataError(UmsrepError):
    """A data set folder is missing, matches no known layout, or holds an unreadable file."""


@dataclass(frozen=True, eq=False)
class Sample:
    id: str
    image: np.ndarray  # float32 [0, 1], bright = dense
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # bool, image-shaped
    label: int | None = None  # 1 abnormal, 0 normal
    pixel_spacing_mm: float | None = None
    patient: str = ""  # "" : the id (one image per patient)


class Dataset:
    """A lazy sequence of samples: files are read when a sample is asked for. `patients`:
    each id's patient (default: the id itself)."""

    def __init__(self, name: str, root: Path, ids: list[str], load: Callable[[str], Sample],
                 patients: list[str] | None = None):
        self.name, self.root, self.ids, self._load = name, root, ids, load
        self.patients = list(ids) if patients is None else patients
        if len(self.patients) != len(ids):
            raise ValueError(f"{len(ids)} ids, {len(self.patients)} patients")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Sample:
        return self._load(self.ids[index])

    def __iter__(self) -> Iterator[Sample]:
        return (self._load(i) for i in self.ids)

    def __repr__(self) -> str:
        return f"Dataset({self.name!r}, {str(self.root)!r}, {len(self)} samples)"


def is_validation(patient: str) -> bool:
    """Whether a patient is in the fixed validation fifth (a hash of the patient's name, so
    that the split never depends on which other files a folder holds)."""
    return zlib.crc32(patient.encode()) % 5 == 0


def split(dataset: Dataset, which: str) -> Dataset:
    """The samples of `dataset` whose patients are in split `which` ("train", "validation"
    or "all"): a patient's images are never on both sides."""
    if which not in SPLITS:
        raise DataError(f"split {which!r}: choose one of {', '.join(SPLITS)}")
    if which == "all":
        return dataset
    keep = [i for i, p in enumerate(dataset.patients)
            if is_validation(p) == (which == "validation")]
    return Dataset(f"{dataset.name}[{which}]", dataset.root, [dataset.ids[i] for i in keep],
                   dataset._load, [dataset.patients[i] for i in keep])


def _open(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from exc


def read_image(path: Path) -> np.ndarray:
    """A grayscale image file as float32 in [0, 1] (see the module docstring for the scaling)."""
    with _open(path) as im:
        deep = im.mode.startswith("I")
        arr = np.asarray(im if deep else im.convert("L"))
    bits = 8 if not deep else max(8, max(int(arr.max()), 1).bit_length())
    image: np.ndarray = (np.clip(arr, 0, None) / np.float32(2 ** bits - 1)).astype(np.float32)
    return image


def read_mask(path: Path) -> np.ndarray:
    """A mask file as bool: foreground above half its maximum (0/1, 0/255, palette alike)."""
    with _open(path) as im:
        arr = np.asarray(im.convert("L"))
    mask: np.ndarray = arr > arr.max() / 2 if arr.max() > 0 else np.zeros(arr.shape, bool)
    return mask


def _label(stem: str) -> int | None:
    match = _LABEL_SUFFIX.search(stem)
    return int(match.group(1)) if match else None


def _check_shape(sample_id: str, image: np.ndarray, masks: dict[str, np.ndarray]) -> None:
    for name, mask in masks.items():
        if mask.shape != image.shape:
            raise DataError(f"{sample_id}: mask {name} is {mask.shape}, image {image.shape}")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _locate(root: Path, marker: str) -> Path:
    """root if it holds `marker`, else its only child holding it (a data set's own folder)."""
    if (root / marker).is_dir():
        return root
    found = [child for child in sorted(root.iterdir()) if (child / marker).is_dir()]
    if len(found) != 1:
        raise DataError(f"{root}: no {marker}/ folder (or several data sets) below it")
    return found[0]


def _require_dir(root: Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    return root


def load_montgomery(root: Path | str) -> Dataset:
    """Montgomery County chest X-rays with their manual lung masks."""
    base = _locate(_require_dir(Path(root)), "CXR_png")
    images = {p.stem: p for p in _images(base / "CXR_png")}
    mask_dirs = {"right_lung": base / "ManualMask" / "rightMask",
                 "left_lung": base / "ManualMask" / "leftMask"}

    def load(sample_id: str) -> Sample:
        path = images[sample_id]
        image = read_image(path)
        masks = {name: read_mask(d / path.name) for name, d in mask_dirs.items()
                 if (d / path.name).is_file()}
        _check_shape(sample_id, image, masks)
        return Sample(sample_id, image, masks, _label(sample_id), MONTGOMERY_SPACING_MM)
    return Dataset("montgomery", base, sorted(images), load)


def split_lungs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(right, left) lungs of a combined lung mask, cut at the emptiest column of the middle
    third (the mediastinum); the right lung is on the image left."""
    w = mask.shape[1]
    profile = mask[:, w // 3:2 * w // 3].sum(axis=0)
    lowest = np.flatnonzero(profile == profile.min())
    cut = w // 3 + int(lowest[len(lowest) // 2])
    right, left = mask.copy(), mask.copy()
    right[:, cut:] = False
    left[:, :cut] = False
    return right, left


def load_shenzhen(root: Path | str) -> Dataset:
    """Shenzhen chest X-rays; lung masks where the published mask files are present."""
    base = _locate(_require_dir(Path(root)), "CXR_png")
    images = {p.stem: p for p in _images(base / "CXR_png")}
    mask_dir = next((base / d for d in ("mask", "masks") if (base / d).is_dir()), None)

    def load(sample_id: str) -> Sample:
        image = read_image(images[sample_id])
        masks: dict[str, np.ndarray] = {}
        path = mask_dir / f"{sample_id}_mask.png" if mask_dir else None
        if path is not None and path.is_file():
            masks["right_lung"], masks["left_lung"] = split_lungs(read_mask(path))
        _check_shape(sample_id, image, masks)
        return Sample(sample_id, image, masks, _label(sample_id), None)
    return Dataset("shenzhen", base, sorted(images), load)


def read_jsrt(path: Path) -> np.ndarray:
    """A JSRT .IMG file as float32 [0, 1], bright = dense (the stored values are inverted)."""
    raw = np.fromfile(path, dtype=">u2")
    if raw.size != JSRT_SHAPE[0] * JSRT_SHAPE[1]:
        raise DataError(f"{path}: {raw.size * 2} bytes, a JSRT image has "
                        f"{JSRT_SHAPE[0] * JSRT_SHAPE[1] * 2}")
    values = np.minimum(raw.reshape(JSRT_SHAPE), 4095).astype(np.float32)
    image: np.ndarray = (1 - values / np.float32(4095)).astype(np.float32)
    return image


def _to_grid(mask: np.ndarray, shape: tuple[int, ...], where: str) -> np.ndarray:
    """A mask on the image grid: as is, or repeated by the integer factor SCR used (2)."""
    if mask.shape == shape:
        return mask
    fy, fx = shape[0] // mask.shape[0], shape[1] // mask.shape[1]
    if fy < 1 or (mask.shape[0] * fy, mask.shape[1] * fx) != shape:
        raise DataError(f"{where}: mask {mask.shape} does not tile the image {shape}")
    grid: np.ndarray = np.repeat(np.repeat(mask, fy, axis=0), fx, axis=1)
    return grid


def load_jsrt(root: Path | str) -> Dataset:
    """JSRT images, with the SCR lung and heart masks where they are present."""
    base = _require_dir(Path(root))
    images = {p.stem: p for p in sorted(base.rglob("*")) if p.suffix.upper() == ".IMG"}
    if not images:
        raise DataError(f"{base}: no JSRT .IMG files below it")
    mask_dirs: dict[str, list[Path]] = {}
    for folder in sorted(p for p in base.rglob("*") if p.is_dir()):
        name = _SCR_STRUCTURES.get(folder.name.lower())
        if name:
            mask_dirs.setdefault(name, []).append(folder)

    def load(sample_id: str) -> Sample:
        image = read_jsrt(images[sample_id])
        masks = {}
        for name, folders in mask_dirs.items():
            path = next((f / f"{sample_id}.gif" for f in folders
                         if (f / f"{sample_id}.gif").is_file()), None)
            if path is not None:
                masks[name] = _to_grid(read_mask(path), image.shape, str(path))
        label = 1 if sample_id.upper().startswith("JPCLN") else (
            0 if sample_id.upper().startswith("JPCNN") else None)
        return Sample(sample_id, image, masks, label, JSRT_SPACING_MM)
    return Dataset("jsrt", base, sorted(images), load)


def _read_json_list(path: Path, keys: set[str]) -> list[dict[str, object]]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(rows, list) or not all(isinstance(r, dict) and keys <= set(r)
                                              for r in rows):
        raise DataError(f"{path}: expected a list of objects with keys {sorted(keys)}")
    return rows


def load_jsrt_scr(root: Path | str) -> Dataset:
    """The shared JSRT + SCR folder: images/, masks/<structure>/, cases.json."""
    base = _locate(_require_dir(Path(root)), "images")
    cases = [str(r["case"]) for r in _read_json_list(base / "cases.json", {"case"})]
    images = {p.stem: p for p in _images(base / "images")}
    missing = [c for c in cases if c not in images]
    if missing:
        raise DataError(f"{base}: cases.json names images that are not in images/: "
                        f"{missing[:3]}")

    def load(sample_id: str) -> Sample:
        path = images[sample_id]
        image = read_image(path)
        masks = {s: read_mask(base / "masks" / s / path.name) for s in _SCR_STRUCTURES.values()
                 if (base / "masks" / s / path.name).is_file()}
        _check_shape(sample_id, image, masks)
        return Sample(sample_id, image, masks, None, SCR_PNG_SPACING_MM, sample_id)
    return Dataset("jsrt-scr", base, cases, load)


NIH_LABELS = {"normal": 0, "pneumonia": 1}


def load_nih_cxr8(root: Path | str) -> Dataset:
    """The shared NIH ChestX-ray8 folder: images/ and labels.json (file, patient, label)."""
    base = _locate(_require_dir(Path(root)), "images")
    rows = _read_json_list(base / "labels.json", {"file", "patient", "label"})
    unknown = sorted({str(r["label"]) for r in rows} - set(NIH_LABELS))
    if unknown:
        raise DataError(f"{base / 'labels.json'}: labels {unknown} are not "
                        f"{' or '.join(NIH_LABELS)}")
    by_id = {Path(str(r["file"])).stem: r for r in rows}
    missing = [str(r["file"]) for r in rows if not (base / "images" / str(r["file"])).is_file()]
    if missing:
        raise DataError(f"{base}: labels.json names images that are not in images/: "
                        f"{missing[:3]}")

    def load(sample_id: str) -> Sample:
        row = by_id[sample_id]
        image = read_image(base / "images" / str(row["file"]))
        return Sample(sample_id, image, {}, NIH_LABELS[str(row["label"])], None,
                      str(row["patient"]))
    ids = list(by_id)
    return Dataset("nih-cxr8", base, ids, load, [str(by_id[i]["patient"]) for i in ids])


def _read_labels(path: Path) -> dict[str, int | None]:
    """labels.csv (columns image,label) keyed by file name and by stem."""
    labels: dict[str, int | None] = {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"image", "label"} <= set(reader.fieldnames):
            raise DataError(f"{path}: needs the columns image,label")
        for line, row in enumerate(reader, start=2):
            text = (row["label"] or "").strip()
            try:
                value = int(text) if text else None
            except ValueError as exc:
                raise DataError(f"{path}:{line}: label {text!r} is not an integer") from exc
            name = (row["image"] or "").strip()
            labels[name] = labels[Path(name).stem] = value
    return labels


def load_folder(root: Path | str) -> Dataset:
    """A generic folder: images/, masks/<structure>/, labels.csv (see the module docstring)."""
    base = _locate(_require_dir(Path(root)), "images")
    images = {p.stem: p for p in _images(base / "images")}
    mask_root = base / "masks"
    structures = sorted(d for d in mask_root.iterdir() if d.is_dir()) if mask_root.is_dir() else []
    labels = _read_labels(base / "labels.csv") if (base / "labels.csv").is_file() else {}

    def load(sample_id: str) -> Sample:
        path = images[sample_id]
        image = read_image(path)
        masks = {}
        for folder in structures:
            found = next((p for p in folder.glob(f"{sample_id}.*")
                          if p.suffix.lower() in IMAGE_SUFFIXES), None)
            if found is not None:
                masks[folder.name] = read_mask(found)
        _check_shape(sample_id, image, masks)
        return Sample(sample_id, image, masks, labels.get(path.name, labels.get(sample_id)))
    return Dataset("folder", base, sorted(images), load)


def _names(folder: Path) -> list[str]:
    return [p.name.upper() for p in _images(folder)] if folder.is_dir() else []


def open_dataset(root: Path | str) -> Dataset:
    """The data set at `root`, its layout recognised from its files; DataError if none fits."""
    base = _require_dir(Path(root))
    candidates = [base, *sorted(p for p in base.iterdir() if p.is_dir())]
    for folder in candidates:
        if (folder / "images").is_dir():
            if (folder / "cases.json").is_file():
                return load_jsrt_scr(folder)
            if (folder / "labels.json").is_file():
                return load_nih_cxr8(folder)
            return load_folder(folder)
        names = _names(folder / "CXR_png")
        if (folder / "ManualMask").is_dir() or any(n.startswith("MCUCXR") for n in names):
            return load_montgomery(folder)
        if names:
            return load_shenzhen(folder)
    if any(p.suffix.upper() == ".IMG" for p in base.rglob("*")):
        return load_jsrt(base)
    raise DataError(
        f"{base}: matches no known data set layout (jsrt-scr images/+masks/+cases.json, "
        "nih-cxr8 images/+labels.json, generic images/[masks/][labels.csv], "
        "Montgomery CXR_png/+ManualMask/, Shenzhen CXR_png/[mask/], JSRT *.IMG[+SCR masks])")
