"""Pipelines are plug-ins: a modality is one module behind `umsrep_core.pipelines.base.Pipeline`,
found through the entry-point group `umsrep.pipelines`. A third modality, installed as a
distribution of its own in a folder on sys.path, is taken by the config, a bundle, inference,
SEG and SR without a line changed elsewhere."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from pacs_node import samples
from pacs_node.config import Process
from tests.conftest import dciodvfy_errors
from umsrep_core import pipelines
from umsrep_core.inference import Predictor
from umsrep_core.models.bundle import load_bundle, save_bundle
from umsrep_core.models.umsrep import ModelConfig, UMSRep
from workers.outputs.seg import build_seg
from workers.outputs.sr import build_sr

TOY = '''
"""A toy modality: any CR; one mask, its area in pixels; two classes."""
from typing import Any, ClassVar
from collections.abc import Mapping
from umsrep_core.pipelines.base import (ANATOMICAL_STRUCTURE, Calibration, Code, Measurement,
                                        Pipeline, Segment, local, sct, ucum)

class Toy(Pipeline):
    name = "toy"
    procedure = sct("363680008", "Radiographic imaging procedure")
    seg_labels = ("spot",)
    class_labels = ("plain", "spotted")
    segments: ClassVar[Mapping[str, Segment]] = {
        "spot": Segment("Spot", ANATOMICAL_STRUCTURE, local("SPOT", "Spot"), "a spot")}
    label_codes: ClassVar[Mapping[str, Code]] = {"plain": local("PLAIN", "Plain"),
                                                 "spotted": local("SPOTTED", "Spotted")}
    measurements: ClassVar[Mapping[str, tuple[Measurement, ...]]] = {"spot": (
        Measurement("spot_pixels", None, local("SPOT_AREA", "Spot area"),
                    ucum("{pixels}", "pixels")),)}
    gates: ClassVar[Mapping[str, tuple[str, float]]] = {"dice.spot": (">=", 0.5)}
    validation_phantoms = 4

    def not_applicable(self, ds):
        return None if ds.get("Modality") == "CR" else "not a CR"

    def calibrate(self, ds):
        return Calibration(notes=["toy: no calibration"])

    def measure(self, masks, label, calibration, reasons):
        spot = masks.get("spot")
        return {"spot_pixels": None if spot is None else int(spot.sum())}

    def describe(self, findings):
        return f"spot {findings.get('spot_pixels')} px"

TOY_PIPELINE = Toy()
'''


@pytest.fixture
def toy_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A distribution `toy-pipeline` with one module and one entry point, on sys.path."""
    (tmp_path / "toy_pipeline.py").write_text(textwrap.dedent(TOY))
    info = tmp_path / "toy_pipeline-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-pipeline\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[umsrep.pipelines]\ntoy = toy_pipeline:TOY_PIPELINE\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    pipelines.names.cache_clear()
    pipelines.pipeline.cache_clear()
    yield
    sys.modules.pop("toy_pipeline", None)
    pipelines.names.cache_clear()
    pipelines.pipeline.cache_clear()


def test_the_installed_pipelines_are_found_without_importing_them() -> None:
    assert pipelines.names() == ("cxr", "echo_doppler")
    with pytest.raises(ValueError, match="no pipeline 'ct' installed"):
        pipelines.pipeline("ct")


def test_a_modality_added_as_one_module_runs_through_every_stage(toy_installed: None,
                                                                 tmp_path: Path) -> None:
    assert "toy" in pipelines.names()
    assert Process(pipeline="toy").pipeline == "toy"  # rules may name it
    torch.manual_seed(0)
    model = UMSRep(ModelConfig(width=4, dec_width=4, depth=3, input_size=64, n_seg=1,
                               n_classes=2, hidden=8))
    folder = save_bundle(model, {"name": "tiny-toy", "version": "0.0.1", "modality": "toy",
                                 "seg_labels": ["spot"], "class_labels": ["plain", "spotted"],
                                 "normalisation": {}, "training_data": "none (untrained)"},
                         tmp_path / "bundle")
    source = samples.cr_dataset(7, rows=128, columns=128)
    assert pipelines.pipeline("toy").not_applicable(source) is None
    [prediction] = Predictor(load_bundle(folder), device="cpu").predict_dicom(source)
    findings = prediction.to_json()
    assert set(findings) >= {"spot_pixels"} and "toy: no calibration" in findings["reasons"]
    masks = {"spot": np.zeros((128, 128), bool)}
    masks["spot"][40:60, 50:70] = True
    seg = build_seg(source, masks, model_name="tiny-toy", model_version="0.0.1",
                    modality="toy")
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "SPOT"
    sr = build_sr(source, seg, {**findings, "spot_pixels": 400, "label": "spotted"},
                  model_name="tiny-toy", model_version="0.0.1", modality="toy")
    for ds, name in ((seg, "seg.dcm"), (sr, "sr.dcm")):
        ds.save_as(tmp_path / name, enforce_file_format=True)
        assert dciodvfy_errors(tmp_path / name) == []
    text = str(pydicom.dcmread(tmp_path / "sr.dcm"))
    assert "Spot area" in text and "Spotted" in text and "Radiographic imaging" in text
