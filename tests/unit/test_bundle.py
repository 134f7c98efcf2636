"""umsrep_core.models.bundle: save, load with every check, fail clearly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from umsrep_core import bundle_files
from umsrep_core.errors import InferenceError
from umsrep_core.models import (
    BundleError,
    ModelConfig,
    SingleTask,
    UMSRep,
    load_bundle,
    save_bundle,
)
from umsrep_core.models.bundle import CLINICAL_USE, available_bundles

TINY = ModelConfig(width=4, depth=2, n_seg=3, input_size=32, dec_width=8, hidden=8)
FIELDS: dict[str, Any] = {
    "name": "cxr-test", "version": "0.0.1", "modality": "cxr",
    "seg_labels": ["right_lung", "left_lung", "heart"], "class_labels": ["normal", "abnormal"],
    "normalisation": {"input": "read_frames [0, 1]", "letterbox": True},
    "training_data": "synthetic phantoms",
}


def _trained(config: ModelConfig = TINY) -> UMSRep:
    torch.manual_seed(1)
    model = UMSRep(config)
    model.train()
    model(torch.rand(4, 1, 32, 32))  # move the batch norm statistics off their defaults
    return model.eval()


def _manifest(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((path / "manifest.json").read_text())
    return data


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_round_trip_gives_the_same_outputs(tmp_path: Path) -> None:
    model = _trained()
    path = save_bundle(model, FIELDS, tmp_path / "cxr")
    bundle = load_bundle(path)
    assert not bundle.model.training and bundle.modality == "cxr" and bundle.config == TINY
    manifest = bundle.manifest
    assert manifest["tasks"] == ["denoise", "segment", "classify"]
    assert manifest["clinical_use"] == CLINICAL_USE
    assert manifest["versions"]["torch"] == torch.__version__
    assert manifest["input_size"] == 32 and manifest["model_config"]["width"] == 4
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        before, after = model(x), bundle.model(x)
    for head in before:
        assert torch.equal(before[head], after[head]), head
    assert load_bundle(str(path)).manifest["sha256"] == manifest["sha256"]  # a str path too


def test_single_task_bundle(tmp_path: Path) -> None:
    model = SingleTask(TINY, "classify")
    fields = {**FIELDS, "seg_labels": []}  # no segmentation head: no labels needed
    bundle = load_bundle(save_bundle(model, fields, tmp_path / "one"))
    assert bundle.model.tasks == ("classify",)


def test_checksum_mismatch(tmp_path: Path) -> None:
    path = save_bundle(_trained(), FIELDS, tmp_path / "b")
    expected = _manifest(path)["sha256"]
    state = torch.load(path / "weights.pt", weights_only=True)
    next(iter(state.values())).add_(1.0)
    torch.save(state, path / "weights.pt")
    with pytest.raises(BundleError, match="sha256 is [0-9a-f]{64}, the manifest expects "
                       + expected) as err:
        load_bundle(path)
    assert isinstance(err.value, InferenceError)


@pytest.mark.parametrize("key", ["sha256", "modality", "clinical_use", "model_config"])
def test_missing_manifest_key(tmp_path: Path, key: str) -> None:
    path = save_bundle(_trained(), FIELDS, tmp_path / "b")
    manifest = _manifest(path)
    del manifest[key]
    _write_manifest(path, manifest)
    with pytest.raises(BundleError, match=f"lacks required keys \\['{key}'\\]"):
        load_bundle(path)


@pytest.mark.parametrize(("change", "message"), [
    ({"modality": "mri"}, "modality 'mri'"),
    ({"tasks": ["segment", "detect"]}, "tasks"),
    ({"clinical_use": "fine"}, "NOT FOR CLINICAL USE"),
    ({"input_size": 64}, "input_size is 64"),
    ({"seg_labels": ["lungs"]}, "number of seg_labels is 1"),
    ({"version": 3}, "version \\(int, expected str\\)"),
])
def test_inconsistent_manifest(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    path = save_bundle(_trained(), FIELDS, tmp_path / "b")
    _write_manifest(path, {**_manifest(path), **change})
    with pytest.raises(BundleError, match=message):
        load_bundle(path)


def test_config_inconsistent_with_weights(tmp_path: Path) -> None:
    path = save_bundle(_trained(), FIELDS, tmp_path / "b")
    manifest = _manifest(path)
    manifest["model_config"]["width"] = 8
    _write_manifest(path, manifest)
    with pytest.raises(BundleError, match="weights do not fit model_config"):
        load_bundle(path)


def test_save_refuses_fields_that_contradict_the_model(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="input_size"):
        save_bundle(_trained(), {**FIELDS, "input_size": 256}, tmp_path / "b")
    with pytest.raises(BundleError, match="seg_labels"):
        save_bundle(_trained(), {**FIELDS, "seg_labels": ["heart"]}, tmp_path / "c")
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_unknown_name_lists_the_packaged_bundles() -> None:
    with pytest.raises(BundleError, match="no packaged bundle named 'no-such-bundle' "
                       "\\(packaged bundles: "):
        load_bundle("no-such-bundle")


def test_missing_directory_and_files(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no bundle directory"):
        load_bundle(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match=r"no manifest\.json"):
        load_bundle(tmp_path / "empty")
    path = save_bundle(_trained(), FIELDS, tmp_path / "b")
    (path / "weights.pt").unlink()
    with pytest.raises(BundleError, match=r"no weights\.pt"):
        load_bundle(path)


def test_names_resolve_to_packaged_bundles_first(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    packaged = tmp_path / "bundles"
    save_bundle(_trained(), FIELDS, packaged / "cxr")
    monkeypatch.setattr(bundle_files, "BUNDLES_DIR", packaged)
    local = tmp_path / "cwd"
    save_bundle(SingleTask(TINY, "classify"), {**FIELDS, "seg_labels": []}, local / "cxr")
    save_bundle(SingleTask(TINY, "classify"), {**FIELDS, "seg_labels": []}, local / "mine")
    monkeypatch.chdir(local)
    assert load_bundle("cxr").path == packaged / "cxr"  # not ./cxr
    assert load_bundle("mine").model.tasks == ("classify",)  # no packaged one: ./mine
    assert available_bundles(packaged) == ["cxr"]
    with pytest.raises(BundleError, match=r"packaged bundles: cxr\)"):
        load_bundle("echo_doppler")
