"""Model bundles: a directory with `weights.pt` (a state_dict) and `manifest.json`.

`load_bundle` is the one way in, and it checks everything before a model is returned: the
manifest's keys and types, the weights' sha256, and that the weights fit the configuration.
Weights are loaded with `weights_only=True`: a bundle is data, never code.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

from umsrep_core.bundle_files import (
    BUNDLES_DIR,
    MANIFEST,
    WEIGHTS,
    BundleError,
    available_bundles,
    read_manifest,
    resolve,
)
from umsrep_core.models.umsrep import HEADS, ModelConfig, UMSRep
from umsrep_core.pipelines import names

__all__ = ["BUNDLES_DIR", "CLINICAL_USE", "DENOISE_GRIDS", "OTHER_CLASS", "Bundle",
           "BundleError", "available_bundles", "load_bundle", "save_bundle"]

CLINICAL_USE = "NOT FOR CLINICAL USE: a research model, not a medical device"
# Optional manifest key `denoise_grid`: where the denoising head works (see inference.py):
# "model" (the letterboxed image, the default) or "source" (the image's pixels, in tiles).
DENOISE_GRIDS = ("model", "source")
# A class of this name among `class_labels` is no finding but the images the model does not
# know (other anatomy, other views, not a radiograph): the Predictor reads its probability as
# the image's applicability, and labels an image with the other classes.
OTHER_CLASS = "other"
_REQUIRED: dict[str, type] = {
    "name": str, "version": str, "modality": str, "tasks": list, "seg_labels": list,
    "class_labels": list, "input_size": int, "normalisation": dict, "model_config": dict,
    "versions": dict, "training_data": str, "clinical_use": str, "sha256": str, "created": str,
}


@dataclass(frozen=True)
class Bundle:
    model: UMSRep  # on the requested device, in eval mode
    manifest: dict[str, Any]
    path: Path

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def modality(self) -> str:
        return str(self.manifest["modality"])


def save_bundle(model: UMSRep, manifest_fields: Mapping[str, Any], path: str | Path) -> Path:
    """Write `model` as a bundle in directory `path` and return it.

    `manifest_fields` gives name, version, modality, seg_labels, class_labels, normalisation
    and training_data; the rest (tasks, input_size, model_config, versions, clinical_use,
    sha256, created) is derived here. The manifest is checked as load_bundle will check it.
    """
    path = Path(path)
    derived = {"tasks": list(model.tasks), "input_size": model.config.input_size,
               "model_config": model.config.to_dict(), "clinical_use": CLINICAL_USE,
               "versions": {"umsrep": _umsrep_version(), "torch": torch.__version__}}
    clash = sorted(k for k in ("tasks", "input_size", "model_config")
                   if k in manifest_fields and manifest_fields[k] != derived[k])
    if clash:
        raise BundleError(f"manifest fields {clash} contradict the model")
    manifest = {**derived, **manifest_fields, "sha256": "0" * 64,
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    _check_manifest(manifest, path)  # before writing anything
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    weights = path / WEIGHTS
    _atomic_write(weights, lambda f: torch.save(state, f))
    manifest["sha256"] = _sha256(weights)
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    _atomic_write(path / MANIFEST, lambda f: f.write(text.encode()))
    return path


def load_bundle(name_or_path: str | Path, device: str | torch.device = "cpu") -> Bundle:
    """The checked bundle at a path, or of that name under umsrep_core/bundles/."""
    path = resolve(name_or_path)
    manifest = read_manifest(path)
    config = _check_manifest(manifest, path)
    weights = path / WEIGHTS
    if not weights.is_file():
        raise BundleError(f"bundle {path}: no {WEIGHTS}")
    actual = _sha256(weights)
    if actual != manifest["sha256"]:
        raise BundleError(f"bundle {path}: {WEIGHTS} sha256 is {actual}, the manifest expects "
                          f"{manifest['sha256']}")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means the same: unusable weights
        raise BundleError(f"bundle {path}: cannot load {WEIGHTS}: {exc}") from exc
    model = UMSRep(config, heads=manifest["tasks"])
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise BundleError(f"bundle {path}: weights do not fit model_config {config}: "
                          f"{exc}") from exc
    return Bundle(model=model.to(device).eval(), manifest=manifest, path=path)


def _check_manifest(manifest: Mapping[str, Any], path: Path) -> ModelConfig:
    """Raise BundleError unless the manifest is complete and self-consistent."""
    where = f"bundle {path}: {MANIFEST}"
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise BundleError(f"{where} lacks required keys {missing}")
    wrong = [f"{k} ({type(manifest[k]).__name__}, expected {t.__name__})"
             for k, t in _REQUIRED.items()
             if not isinstance(manifest[k], t) or isinstance(manifest[k], bool)]
    if wrong:
        raise BundleError(f"{where} has keys of the wrong type: {', '.join(wrong)}")
    if manifest["modality"] not in names():
        raise BundleError(f"{where}: modality {manifest['modality']!r} is no installed "
                          f"pipeline ({', '.join(names())})")
    tasks = manifest["tasks"]
    if not tasks or len(set(tasks)) != len(tasks) or not set(tasks) <= set(HEADS):
        raise BundleError(f"{where}: tasks {tasks} must be distinct names from {HEADS}")
    if manifest.get("denoise_grid", "model") not in DENOISE_GRIDS:
        raise BundleError(f"{where}: denoise_grid {manifest['denoise_grid']!r} is not one of "
                          f"{DENOISE_GRIDS}")
    if "NOT FOR CLINICAL USE" not in manifest["clinical_use"]:
        raise BundleError(f"{where}: clinical_use must say NOT FOR CLINICAL USE")
    if not re.fullmatch(r"[0-9a-f]{64}", manifest["sha256"]):
        raise BundleError(f"{where}: sha256 {manifest['sha256']!r} is not a hex digest")
    try:
        config = ModelConfig.from_dict(manifest["model_config"])
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{where}: bad model_config: {exc}") from exc
    checks = [("input_size", manifest["input_size"], config.input_size)]
    if "segment" in tasks:
        checks.append(("number of seg_labels", len(manifest["seg_labels"]), config.n_seg))
    if "classify" in tasks:
        checks.append(("number of class_labels", len(manifest["class_labels"]),
                       config.n_classes))
    for what, got, expected in checks:
        if got != expected:
            raise BundleError(f"{where}: {what} is {got}, model_config says {expected}")
    return config


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write through a temporary file in the same directory, then rename: a reader never sees
    half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umsrep_version() -> str:
    try:
        return importlib.metadata.version("umsrep")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
