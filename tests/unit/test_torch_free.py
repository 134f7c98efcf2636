"""tests/torch_free.txt lists test modules that import no torch: .ci/other-pythons runs them
on Python 3.12 and 3.13, where no CPU torch can be installed. They stay torch-free."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_listed_modules_import_no_torch() -> None:
    listed = [line for line in (ROOT / "tests" / "torch_free.txt").read_text().splitlines()
              if line and not line.startswith("#")]
    assert all((ROOT / path).is_file() for path in listed)
    modules = [path.removesuffix(".py").replace("/", ".") for path in listed]
    probe = "import importlib, sys\n" + "".join(
        f"importlib.import_module({m!r})\n" for m in modules) + (
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    imported = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                              text=True, timeout=120, check=True)
    assert imported.stdout.strip() == "[]"
