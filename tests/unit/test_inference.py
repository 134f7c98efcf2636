"""The inference path: source-grid outputs, JSON keys, reasons for nulls, one encoder pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from torch import Tensor

from pacs_node.samples import cr_dataset, default_spectral_region, us_doppler_dataset
from umsrep_core.evaluation.metrics import dice
from umsrep_core.inference import Predictor, read_image_file
from umsrep_core.measure import DOPPLER_TYPES, STRUCTURES
from umsrep_core.models.bundle import Bundle, BundleError, load_bundle, save_bundle
from umsrep_core.models.umsrep import ModelConfig, UMSRep

CXR_KEYS = {"modality", "label", "probability", "ctr", "areas_mm2", "reasons", "not_applicable"}
ECHO_KEYS = {"modality", "label", "probability", "doppler_type", "peak_velocity_cm_s", "e_cm_s",
             "a_cm_s", "e_a_ratio", "vti_cm", "reasons", "not_applicable"}
LABELS = {"cxr": (list(STRUCTURES), ["normal", "abnormal"]),
          "echo_doppler": (["envelope"], list(DOPPLER_TYPES))}


def tiny_bundle(root: Path, modality: str) -> Path:
    """A width-4, 64-pixel model of `modality` saved as a bundle under `root`."""
    seg, classes = LABELS[modality]
    torch.manual_seed(0)
    model = UMSRep(ModelConfig(width=4, dec_width=4, depth=3, input_size=64, n_seg=len(seg),
                               n_classes=len(classes), hidden=8))
    return save_bundle(model, {"name": f"tiny-{modality}", "version": "0.0.1",
                               "modality": modality, "seg_labels": seg, "class_labels": classes,
                               "normalisation": {}, "training_data": "none (untrained)"},
                       root / modality)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return {m: tiny_bundle(root, m) for m in LABELS}


def test_chest_dicom_on_the_source_grid(bundles: dict[str, Path]) -> None:
    predictor = Predictor(load_bundle(bundles["cxr"]), device="cpu")
    [p] = predictor.predict_dicom(cr_dataset(3, rows=300, columns=260, pixel_spacing=0.5))
    assert set(p.masks) == set(STRUCTURES)
    assert all(m.shape == (300, 260) and m.dtype == bool for m in p.masks.values())
    assert p.denoised is not None and p.denoised.shape == (300, 260)
    assert p.denoised.min() >= 0.0 and p.denoised.max() <= 1.0
    doc = p.to_json()
    assert set(doc) == CXR_KEYS and doc["modality"] == "cxr"
    assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    # An untrained model's masks are no chest: no label, nothing measured, and why
    # (test_applicability measures masks that are one).
    assert doc["not_applicable"].startswith("not a frontal chest radiograph: ")
    assert (doc["label"], doc["probability"], doc["ctr"]) == (None, None, None)
    assert doc["areas_mm2"] == dict.fromkeys(STRUCTURES)
    assert doc["reasons"][-1] == f"{doc['not_applicable']}: nothing measured"


def test_png_without_spacing_gives_null_areas_with_reasons(bundles: dict[str, Path],
                                                           tmp_path: Path) -> None:
    path = tmp_path / "chest.png"
    mpimg.imsave(path, np.random.default_rng(0).random((90, 70)), cmap="gray")
    image = read_image_file(path)
    assert image.shape == (90, 70) and image.dtype == np.float32
    p = Predictor(load_bundle(bundles["cxr"]), device="cpu").predict_array(image)
    doc = p.to_json()
    assert doc["areas_mm2"] == dict.fromkeys(STRUCTURES)
    assert doc["reasons"]  # an untrained model's masks are no chest; test_applicability has
    assert all(m.shape == (90, 70) for m in p.masks.values())  # the missing spacing's reason


def test_doppler_dicom_cropped_to_its_region(bundles: dict[str, Path]) -> None:
    predictor = Predictor(load_bundle(bundles["echo_doppler"]), device="cpu")
    [p] = predictor.predict_dicom(us_doppler_dataset(4, rows=300, columns=400))
    region = default_spectral_region(300, 400)
    assert p.region == region
    envelope = p.masks["envelope"]
    assert envelope.shape == (300, 400)
    outside = np.ones_like(envelope)
    outside[region.y0:region.y1 + 1, region.x0:region.x1 + 1] = False
    assert not envelope[outside].any()  # the model saw the strip only
    doc = p.to_json()
    assert set(doc) == ECHO_KEYS and doc["doppler_type"] == doc["label"]
    assert doc["label"] in DOPPLER_TYPES
    nulls = [k for k in ECHO_KEYS - {"reasons"} if doc[k] is None]
    assert not nulls or doc["reasons"]  # every null explained


def test_doppler_png_has_no_calibration(bundles: dict[str, Path]) -> None:
    predictor = Predictor(load_bundle(bundles["echo_doppler"]), device="cpu")
    doc = predictor.predict_array(np.zeros((80, 160), np.float32)).to_json()
    assert doc["peak_velocity_cm_s"] is None and doc["vti_cm"] is None
    assert any("calibration" in r or "not a spectral" in r for r in doc["reasons"])


class _Threshold(UMSRep):
    """Segments what is bright, denoises to the input: outputs whose place is known."""

    def forward(self, x: Tensor, heads: Any = None) -> dict[str, Tensor]:
        out = super().forward(x, heads)
        out["segment"] = (x - 0.5).repeat(1, self.config.n_seg, 1, 1) * 100
        out["denoise"] = x
        return out


@pytest.mark.parametrize("modality", ["cxr", "echo_doppler"])
def test_masks_land_where_the_structures_are(bundles: dict[str, Path], modality: str) -> None:
    loaded = load_bundle(bundles[modality])
    model = _Threshold(loaded.config)
    bundle = Bundle(model=model.eval(), manifest=loaded.manifest, path=loaded.path)
    image = np.zeros((300, 400), np.float32)
    image[60:200, 110:330] = 1.0  # off-centre, anisotropic: a flip or shift would show
    region = default_spectral_region(300, 400) if modality == "echo_doppler" else None
    p = Predictor(bundle, device="cpu").predict_array(image, region=region)
    truth = image > 0.5
    if region is not None:
        inside = np.zeros_like(truth)
        inside[region.y0:region.y1 + 1, region.x0:region.x1 + 1] = True
        truth &= inside
    for mask in p.masks.values():
        assert dice(mask, truth) > 0.97
    assert p.denoised is not None
    assert np.abs(p.denoised - image).mean() < 0.02


def test_predict_batch_runs_the_encoder_once_per_image(bundles: dict[str, Path]) -> None:
    predictor = Predictor(load_bundle(bundles["cxr"]), device="cpu", batch_size=2)
    calls: dict[str, list[int]] = {"encoder": [], **{h: [] for h in predictor.heads}}

    def hook(name: str) -> Any:
        return lambda module, inputs, output: calls[name].append(
            int((inputs[0] if name == "encoder" else inputs[0][1]).shape[0]))

    model = predictor.model
    model.encoder.register_forward_hook(hook("encoder"))
    for name, head in model.heads.items():
        head.register_forward_hook(hook(name))
    assert model.stacked is not None
    for name in model.stacked.heads:  # decoders asked together run stacked, as one
        model.stacked.register_forward_hook(hook(name))
    images = [np.random.default_rng(i).random((50 + 10 * i, 60)).astype(np.float32)
              for i in range(3)]
    predictions = predictor.predict_batch(images, pixel_spacings=[0.2, None, (0.1, 0.2)])
    assert calls["encoder"] == [2, 1]  # 3 images, batches of 2: each image encoded once
    assert all(calls[h] == [2, 1] for h in predictor.heads)  # every head, same passes
    assert [p.masks["heart"].shape for p in predictions] == [im.shape for im in images]
    assert predictions[1].to_json()["areas_mm2"]["heart"] is None


def test_a_source_grid_bundle_denoises_in_tiles_only_when_asked(tmp_path: Path) -> None:
    seg, classes = LABELS["cxr"]
    torch.manual_seed(0)
    model = UMSRep(ModelConfig(width=4, dec_width=4, depth=3, input_size=64, n_seg=len(seg),
                               n_classes=len(classes), hidden=8))
    path = save_bundle(model, {"name": "tiles", "version": "0", "modality": "cxr",
                               "seg_labels": seg, "class_labels": classes,
                               "normalisation": {}, "denoise_grid": "source",
                               "training_data": "none (untrained)"}, tmp_path / "b")
    predictor = Predictor(load_bundle(path), device="cpu")
    seen: list[tuple[int, ...]] = []
    predictor.model.encoder.register_forward_hook(
        lambda module, inputs, output: seen.append(tuple(inputs[0].shape)))
    image = np.random.default_rng(0).random((300, 200)).astype(np.float32)

    without = predictor.predict_array(image, heads=("segment", "classify"))
    assert without.denoised is None and seen == [(1, 1, 64, 64)]  # the one pass, no tiles
    seen.clear()
    tiled = predictor.predict_array(image)
    # The whole image once for the analysis heads; then 32-pixel tile centres with 16 pixels
    # of context each side cover 300 x 200 in 10 x 7 tiles of the input size.
    assert seen[0] == (1, 1, 64, 64) and all(s[1:] == (1, 64, 64) for s in seen[1:])
    assert sum(s[0] for s in seen[1:]) == 70
    assert tiled.denoised is not None and tiled.denoised.shape == image.shape
    assert tiled.denoised.min() >= 0 and tiled.denoised.max() <= 1
    assert set(tiled.masks) == set(seg) and tiled.label == without.label


def test_a_manifest_with_an_unknown_denoise_grid_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="denoise_grid 'detector'"):
        save_bundle(UMSRep(ModelConfig(width=4, depth=2, input_size=32)),
                    {"name": "x", "version": "0", "modality": "cxr", "seg_labels": ["a"] * 3,
                     "class_labels": ["n", "a"], "normalisation": {},
                     "denoise_grid": "detector", "training_data": "none"}, tmp_path / "x")


@pytest.mark.parametrize(("other_bias", "applies"), [(-8.0, True), (8.0, False)])
def test_the_class_other_is_the_applicability_score_not_a_label(
        tmp_path: Path, other_bias: float, applies: bool) -> None:
    torch.manual_seed(0)
    model = UMSRep(ModelConfig(width=4, dec_width=4, depth=3, input_size=64, n_classes=3,
                               hidden=8, standardise=True), heads=("classify",))
    last = model.heads["classify"].mlp[-1]
    with torch.no_grad():  # the class "other" made certain, or unlikely, whatever the image
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, 1.0, other_bias]))
    bundle = load_bundle(save_bundle(model, {
        "name": "other", "version": "0.0.1", "modality": "cxr", "seg_labels": list(STRUCTURES),
        "class_labels": ["normal", "pneumonia", "other"], "normalisation": {},
        "training_data": "none (untrained)"}, tmp_path / "b"))
    predictor = Predictor(bundle, device="cpu")
    assert predictor.class_labels == ["normal", "pneumonia"]
    p = predictor.predict_array(np.random.default_rng(0).random((90, 70), dtype=np.float32))
    # the label's probability is given "a chest": the two classes renormalised
    assert sum(p.probabilities.values()) == pytest.approx(1.0)
    assert p.probabilities["pneumonia"] == pytest.approx(np.e / (1 + np.e), abs=1e-4)
    if applies:
        assert p.not_applicable is None and p.label == "pneumonia"
    else:
        assert p.not_applicable == ("not a frontal chest radiograph: the model scores it 1.00 "
                                    "as another kind of image")
        assert (p.label, p.probability, p.measurements["ctr"]) == (None, None, None)
        assert p.reasons[-1] == f"{p.not_applicable}: nothing measured"
