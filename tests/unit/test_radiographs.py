"""Training on real radiographs: data sets whose labels differ in one pool, unknown targets
skipped by the losses, negatives of the class "other", validation on held-out patients, and a
run that trains, resumes exactly and exports a bundle that serves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

from tests.conftest import shared_data
from umsrep_core.data import is_validation, open_dataset, split
from umsrep_core.evaluation.metrics import dice
from umsrep_core.evaluation.report import evaluate
from umsrep_core.inference import Predictor
from umsrep_core.measure.chest import STRUCTURES
from umsrep_core.models.bundle import Bundle, load_bundle
from umsrep_core.pipelines import pipeline
from umsrep_core.training.data import CHEST, NO_CLASS
from umsrep_core.training.losses import WEIGHTS, loss_terms
from umsrep_core.training.radiographs import (
    NEGATIVES,
    NOISE,
    OTHER,
    RadiographPool,
    _graphic,
    radiograph_held_out,
)
from umsrep_core.training.runs import RunSpec, export, train

SIZE = 48  # a multiple of 2**depth, over twice the denoising tiles' margin


def _names(prefix: str, validation: bool, count: int) -> list[str]:
    """`count` names whose patient falls in the split asked for."""
    names = (f"{prefix}{k:03d}" for k in range(1000))
    return [n for n in names if is_validation(n) == validation][:count]


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _chest(rng: np.random.Generator, h: int = 48, w: int = 40
           ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A bright body with two dark lungs and a bright heart between them, and its masks."""
    image = np.full((h, w), 200, np.uint8)
    masks = {name: np.zeros((h, w), np.uint8) for name in ("right_lung", "left_lung", "heart")}
    masks["right_lung"][8:40, 4:18] = masks["left_lung"][8:40, 22:36] = 255
    masks["heart"][24:40, 14:26] = 255
    image[masks["right_lung"] > 0] = image[masks["left_lung"] > 0] = 60
    image[masks["heart"] > 0] = 230
    noisy = image + rng.integers(0, 20, image.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8), masks


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    jsrt, nih = root / "jsrt-scr", root / "nih-cxr8"
    cases = _names("JPCNN", False, 6) + _names("JPCNN", True, 2)
    for case in cases:
        image, masks = _chest(rng)
        _save(jsrt / "images" / f"{case}.png", image)
        for name, mask in masks.items():
            _save(jsrt / "masks" / name / f"{case}.png", mask)
    (jsrt / "cases.json").write_text(json.dumps([{"case": c, "nodule": False, "ctr": 0.4}
                                                 for c in cases]))
    rows = []
    for patient in _names("0000", False, 6) + _names("0000", True, 2):
        for k, label in enumerate(("normal", "pneumonia")):
            image, _ = _chest(rng, 40, 40)
            _save(nih / "images" / f"{patient}_00{k}.png", image // (1 + k))
            rows.append({"file": f"{patient}_00{k}.png", "patient": patient, "label": label})
    (nih / "labels.json").write_text(json.dumps(rows))
    return str(jsrt), str(nih)


def test_a_batch_mixes_the_data_sets_with_their_own_targets(folders: tuple[str, str]) -> None:
    pool = RadiographPool(folders, image_size=SIZE, seed=1)
    assert len(pool) == 6 + 12 and pool.refresh_images(6).shape == (18, 1, SIZE, SIZE)
    images, clean, masks, labels = pool.sample(16)
    assert images.shape == clean.shape == (16, 1, SIZE, SIZE) and masks.shape[1] == 3
    # 6 radiographs with masks, 6 with a class, 2 denoising tiles, 2 negatives
    assert labels.tolist()[:6] == [CHEST] * 6 and set(labels[6:12].tolist()) <= {0, 1}
    assert labels.tolist()[12:] == [NO_CLASS] * 2 + [OTHER] * 2
    has_masks = masks[:, 0, 0, 0].isfinite()
    assert has_masks.tolist() == [True] * 6 + [False] * 10
    assert set(torch.unique(masks[:6]).tolist()) == {0.0, 1.0}
    # every other radiograph is a denoising target too, with the tiles
    has_clean = clean[:, 0, 0, 0].isfinite()
    assert has_clean.tolist() == [False, True] * 6 + [True] * 2 + [False] * 2
    for noisy in (slice(1, 12, 2), slice(12, 14)):
        noise = (images[noisy] - clean[noisy]).std().item()
        assert NOISE[0] / 2 < noise < NOISE[1] * 1.5
    assert images.min() >= 0 and images.max() <= 1


@pytest.mark.parametrize(("heads", "composition"), [
    (("segment",), (16, 0, 0, 0)), (("classify",), (0, 14, 0, 2)), (("denoise",), (0, 0, 16, 0)),
    (("segment", "classify"), (7, 7, 0, 2)), (("denoise", "segment"), (14, 0, 2, 0))])
def test_a_separate_model_learns_from_the_images_its_head_has_targets_for(
        folders: tuple[str, str], heads: tuple[str, ...],
        composition: tuple[int, int, int, int]) -> None:
    pool = RadiographPool(folders, image_size=SIZE, heads=heads)
    assert pool.composition(16) == composition
    _, clean, masks, labels = pool.sample(16)
    masked, classed, tiles, negatives = composition
    assert int(masks[:, 0, 0, 0].isfinite().sum()) == masked
    assert int((labels >= 0).sum()) == classed + negatives
    assert int(clean[:, 0, 0, 0].isfinite().sum()) == tiles + (
        (masked + classed) // 2 if "denoise" in heads else 0)


def test_the_augmentation_moves_masks_with_their_image(folders: tuple[str, str]) -> None:
    pool = RadiographPool(folders, image_size=SIZE, seed=2)
    images, _, masks, _ = pool.sample(16)
    for image, mask in zip(images[:6, 0], masks[:6], strict=True):
        # the lungs are dark in the image wherever their masks say, turned and scaled alike
        lungs = (mask[0] + mask[1]) > 0
        assert image[lungs].mean() < image[~lungs & (mask[2] == 0)].mean()


def test_resumed_pools_draw_the_same_batches(folders: tuple[str, str]) -> None:
    first, second = (RadiographPool(folders, image_size=SIZE, seed=3) for _ in range(2))
    first.sample(8)
    second.load_state_dict(first.state_dict())
    for a, b in zip(first.sample(8), second.sample(8), strict=True):
        assert torch.equal(a.nan_to_num(), b.nan_to_num())


def test_validation_holds_the_held_out_patients_and_every_kind_of_negative(
        folders: tuple[str, str]) -> None:
    held = radiograph_held_out(folders, SIZE)
    radiographs = 2 + 4  # two JSRT cases, two NIH patients of two images
    negatives = len(NEGATIVES)
    assert held.images.shape == (radiographs + negatives, 1, SIZE, SIZE)
    assert held.labels.tolist()[:2] == [CHEST] * 2 and held.labels[-negatives:].tolist() == [
        OTHER] * negatives
    assert np.isfinite(held.masks[:2]).all() and np.isnan(held.masks[2:]).all()
    assert held.noisy_tiles.shape == held.clean_tiles.shape == (radiographs, 1, SIZE, SIZE)


def test_graphic_negatives_draw_at_any_input_size() -> None:
    """Text on a canvas under 72 px (a model input of 48 drawn at up to 3x) takes the
    smallest scale: it once asked numpy for a scale in an empty range and raised."""
    for seed in range(40):
        image = _graphic(SIZE, np.random.default_rng(seed))
        assert image.shape == (SIZE, SIZE) and 0 <= image.min() <= image.max() <= 1


def test_the_class_loss_scores_an_unknown_chest_on_not_being_other() -> None:
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0], [5.0, 0.0, 0.0]])
    batch = (torch.zeros(3, 1, 4, 4), torch.zeros(3, 1, 4, 4), torch.zeros(3, 3, 4, 4),
             torch.tensor([CHEST, OTHER, NO_CLASS]))
    [term] = loss_terms("classify", logits, batch)
    p = torch.softmax(logits, dim=1)
    expected = -(torch.log(p[0, 0] + p[0, 1]) + torch.log(p[1, 2])) / 2
    assert term.item() == pytest.approx(WEIGHTS["classify"] * expected.item(), rel=1e-5)


def test_the_segmentation_loss_skips_images_without_masks() -> None:
    out = torch.randn(2, 3, 4, 4, requires_grad=True)
    masks = torch.stack([torch.ones(3, 4, 4), torch.full((3, 4, 4), float("nan"))])
    batch = (torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4), masks, torch.zeros(2).long())
    only_first = loss_terms("segment", out[:1], (*batch[:2], masks[:1], batch[3][:1]))
    both = loss_terms("segment", out, batch)
    assert [t.item() for t in both] == pytest.approx([t.item() for t in only_first])
    sum(both).backward()
    assert out.grad is not None and (out.grad[1] == 0).all()


def test_a_run_on_real_folders_trains_resumes_and_serves(folders: tuple[str, str],
                                                         tmp_path: Path) -> None:
    spec = RunSpec("cxr", steps=4, batch=8, image_size=SIZE, data=folders,
                   model={"width": 4, "dec_width": 4, "depth": 3, "hidden": 8})
    assert spec.labels[1] == ["normal", "pneumonia", "other"]
    assert spec.config().standardise and spec.config().n_classes == 3
    whole = train(spec, tmp_path / "whole", progress=False, val_every=2)
    assert train(spec, tmp_path / "cut", progress=False, val_every=2, stop_after=3) is None
    resumed = train(spec, tmp_path / "cut", resume=True, progress=False, val_every=2)
    assert whole is not None and resumed is not None
    assert resumed["losses"] == whole["losses"]
    metrics = whole["metrics"]
    assert {"dice.heart", "ctr_abs_error", "auc", "chest_kept", "other_refused",
            "psnr_gain_db"} <= set(metrics)
    bundle = load_bundle(export(tmp_path / "whole", tmp_path / "bundle", name="real"))
    assert bundle.manifest["class_labels"] == ["normal", "pneumonia", "other"]
    assert "real radiographs, the train split of jsrt-scr, nih-cxr8" in bundle.manifest[
        "training_data"]
    predictor = Predictor(bundle, device="cpu")
    [p] = predictor.predict_batch([np.random.default_rng(0).random((50, 40), np.float32)])
    assert set(p.probabilities) == {"normal", "pneumonia"}


def test_the_packaged_cxr_bundle_meets_every_gate_on_held_out_patients(tmp_path: Path) -> None:
    """The shipped model on the patients its training held out (the validation split of the
    shared JSRT/SCR and NIH ChestX-ray8 folders), scored as `umsrep model evaluate` scores
    it: every gate of issue 21 met, no chest left without a CTR. A change to the letterbox,
    the pixel pipeline or the mask clean-up that costs accuracy fails here."""
    data = [shared_data("jsrt-scr"), shared_data("nih-cxr8")]
    report = evaluate(load_bundle("cxr"), out=tmp_path, data=data, split="validation",
                      progress=False)
    failed = {g["metric"]: g["value"] for g in report["gates"] if g["passed"] is not True}
    assert failed == {}
    assert {g["metric"] for g in report["gates"]} >= {
        "dice.right_lung", "dice.left_lung", "dice.heart", "ctr_abs_error", "auc"}
    assert report["metrics"]["ctr_unmeasured"] == 0


def _cr(stored: np.ndarray, photometric: str = "MONOCHROME2", **attributes: str) -> Dataset:
    """A chest CR of 12-bit stored values, as a vendor's display chain presents them."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = ComputedRadiographyImageStorage, generate_uid()
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.clip(np.rint(stored), 0, 4095).astype(np.uint16).tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _window(stored: np.ndarray, clipped: float, **attributes: str) -> Dataset:
    """A window that clips the darkest and the brightest `clipped` of the image."""
    low, high = np.percentile(stored, [100 * clipped, 100 * (1 - clipped)])
    return _cr(stored, WindowCenter=f"{(low + high) / 2:.1f}", WindowWidth=f"{high - low:.1f}",
               **attributes)


# The same radiograph as real CRs come, each a display chain the model has to see through:
# (stored 12-bit values -> dataset, the border each side as a share of the image's rows).
DISPLAY_CHAINS = {
    "monochrome1": (lambda s: _cr(4095 - s, "MONOCHROME1"), 0.0),
    "window 10 %": (lambda s: _window(s, 0.10), 0.0),
    "sigmoid window": (lambda s: _window(s, 0.10, VOILUTFunction="SIGMOID"), 0.0),
    "gamma 0.6": (lambda s: _cr(4095 * (s / 4095) ** 0.6), 0.0),
    "gamma 1.6": (lambda s: _cr(4095 * (s / 4095) ** 1.6), 0.0),
    "black border 10 %": (lambda s: _cr(np.pad(s, round(0.1 * s.shape[0]))), 0.1),
    "collimated 5 %": (lambda s: _cr(np.pad(s, round(0.05 * s.shape[0]),
                                            constant_values=4095)), 0.05),
}


def _chain_scores(bundle: Bundle, chain: str) -> dict[str, float]:
    """Dice of each structure and the CTR error against the reference masks of the held-out
    JSRT/SCR patients, each image sent as a CR through the display chain `chain`."""
    predictor = Predictor(bundle, device="cpu")
    build, border = DISPLAY_CHAINS[chain]
    chest = pipeline("cxr")
    scores: dict[str, list[float]] = {name: [] for name in STRUCTURES}
    errors = []
    for sample in split(open_dataset(shared_data("jsrt-scr")), "validation"):
        [prediction] = predictor.predict_dicom(build(sample.image * 4095))
        pad = round(border * sample.image.shape[0])
        masks = {name: mask[pad:mask.shape[0] - pad, pad:mask.shape[1] - pad]
                 for name, mask in prediction.masks.items()}
        for name in STRUCTURES:
            scores[name].append(dice(masks[name], sample.masks[name]))
        ctr, truth = prediction.measurements["ctr"], chest.truth(sample.masks)["ctr"]
        errors.append(1.0 if ctr is None or truth is None else abs(ctr - truth))
    return {**{f"dice.{name}": float(np.mean(values)) for name, values in scores.items()},
            "ctr_abs_error": float(np.mean(errors))}


@pytest.mark.parametrize("chain", list(DISPLAY_CHAINS))
def test_the_packaged_cxr_bundle_meets_its_gates_through_every_display_chain(chain: str
                                                                             ) -> None:
    """The held-out JSRT/SCR patients sent as real CRs come: inverted (MONOCHROME1), through
    a vendor's window or another curve, or with a black or a collimated border: the masks
    and the CTR still meet their gates. 0.7.0, trained without zoom, border or window
    augmentation, missed them with a black border of 10 %: CTR error 0.048, heart Dice 0.898
    (0.8.0: 0.016, 0.936; 0.9.0: 0.016, 0.937)."""
    scores = _chain_scores(load_bundle("cxr"), chain)
    gates = {metric: gate for metric, gate in pipeline("cxr").gates.items() if metric in scores}
    assert set(gates) == set(scores)
    missed = {metric: scores[metric] for metric, (op, bound) in gates.items()
              if not (scores[metric] >= bound if op == ">=" else scores[metric] <= bound)}
    assert missed == {}
