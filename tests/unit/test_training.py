"""The demo-bundle training: phantoms prepared as the Predictor sees them, a loss that falls,
a bundle that loads and serves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from umsrep_core.inference import Predictor
from umsrep_core.models.bundle import load_bundle, save_bundle
from umsrep_core.models.umsrep import ModelConfig, UMSRep
from umsrep_core.training.demo import LABELS, joint_loss, phantom_arrays, train

TINY = {"width": 4, "dec_width": 4, "depth": 3, "input_size": 64, "hidden": 8}


@pytest.mark.parametrize("modality", sorted(LABELS))
def test_phantom_arrays_match_the_model_input(modality: str) -> None:
    images, clean, masks, labels = phantom_arrays(modality, range(4), 64)
    seg, classes = LABELS[modality]
    assert images.shape == clean.shape == (4, 1, 64, 64)
    assert masks.shape == (4, len(seg), 64, 64) and set(np.unique(masks)) <= {0.0, 1.0}
    assert images.min() >= 0 and images.max() <= 1 and labels.max() < len(classes)


def test_training_lowers_the_joint_loss_and_the_bundle_serves(tmp_path: Path) -> None:
    seg, classes = LABELS["cxr"]
    config = ModelConfig(n_seg=len(seg), n_classes=len(classes), **TINY)
    images, clean, masks, labels = (torch.from_numpy(a) for a in
                                    phantom_arrays("cxr", range(900, 916), 64))
    torch.manual_seed(0)  # as train() starts
    untrained = UMSRep(config).eval()
    model, steps = train("cxr", steps=25, budget_s=600, size=64, config=config, pool_size=32,
                         progress=False)
    assert steps == 25
    with torch.no_grad():
        before = joint_loss(untrained(images), clean, masks, labels).item()
        after = joint_loss(model(images), clean, masks, labels).item()
    assert after < 0.9 * before
    path = save_bundle(model, {"name": "t", "version": "0", "modality": "cxr",
                               "seg_labels": seg, "class_labels": classes,
                               "normalisation": {}, "training_data": "phantoms"}, tmp_path / "b")
    [prediction] = Predictor(load_bundle(path), device="cpu").predict_batch(
        [images[0, 0].numpy()])
    assert set(prediction.masks) == set(seg) and prediction.label in classes
