"""Where a model bundle is and what its manifest says, without torch: the node checks the
bundles its rules name (`umsrep routes check`) and never imports torch; loading the weights
is `umsrep_core.models.bundle`'s."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from umsrep_core.errors import InferenceError

BUNDLES_DIR = Path(__file__).resolve().parent / "bundles"
WEIGHTS, MANIFEST = "weights.pt", "manifest.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class BundleError(InferenceError):
    """A bundle is missing, malformed, or does not match its own manifest."""


def available_bundles(root: Path | None = None) -> list[str]:
    """Names of the bundles (directories holding a manifest) in `root`, default the packaged."""
    root = root or BUNDLES_DIR
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / MANIFEST).is_file())


def resolve(name_or_path: str | Path) -> Path:
    """A bare name is a packaged bundle first, then a local directory; anything else a path."""
    text = str(name_or_path)
    if not isinstance(name_or_path, Path) and _NAME.fullmatch(text):
        if (BUNDLES_DIR / text).is_dir():
            return BUNDLES_DIR / text
        if not Path(text).is_dir():
            raise BundleError(f"no packaged bundle named {text!r} (packaged bundles: "
                              f"{', '.join(available_bundles()) or 'none'})")
    path = Path(text)
    if not path.is_dir():
        raise BundleError(f"no bundle directory {path}")
    return path


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the bundle directory `path`, as a JSON object."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise BundleError(f"bundle {path}: no {MANIFEST}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"bundle {path}: unreadable {MANIFEST}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"bundle {path}: {MANIFEST} is not a JSON object")
    return manifest
