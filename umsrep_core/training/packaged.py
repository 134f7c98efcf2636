"""The packaged bundles `cxr` and `echo_doppler`: one reproducible command each.

    python -m umsrep_core.training.packaged --modality cxr --data JSRT_SCR NIH_CXR8
    python -m umsrep_core.training.packaged --modality echo_doppler

cxr, the real-data model: UMS-Rep's two stages on real radiographs, the train split of the
data folders (umsrep_core.data.split): the encoder pretrained without labels on every image,
then every head fine-tuned jointly on it, the encoder with them (masks from JSRT/SCR, normal or
pneumonia from NIH ChestX-ray8, denoising on every image, negatives of the class "other").
echo_doppler: a joint run from scratch on phantoms (there is no real Doppler data here).
Each run has a fixed seed and resumes in --work; the bundle is exported into
umsrep_core/bundles/. Torch uses the threads given (default: every core this process may use).
NOT FOR CLINICAL USE: research models.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from umsrep_core.models.bundle import BUNDLES_DIR
from umsrep_core.training.compare import grid
from umsrep_core.training.runs import TrainingError, export, train

__all__ = ["RECIPES", "Recipe", "build"]


@dataclass(frozen=True)
class Recipe:
    steps: int  # fine-tuning (or, without pretraining, training) steps
    version: str  # part of every output's UID: it changes whenever the weights do
    image_size: int
    pretrain_steps: int = 0  # 0: trained from scratch
    real: bool = False  # trained on --data folders
    model: Mapping[str, Any] = field(default_factory=dict)  # ModelConfig overrides


RECIPES = {
    # Width 24 on half-resolution levels (unshuffle 2): half the arithmetic of width 16 at
    # full resolution, and a quarter of its activation memory (bench/README, issue 21).
    # 3200 steps: a joint batch holds 6 masked radiographs, and at 1600 the held-out CTR
    # error sat near its gate (0.018 against 0.02; at 3200, 0.015), 47 minutes on 2 cores.
    # 0.8.0: the same recipe, with the zoom, border and window augmentation and batch norms
    # refreshed over training batches (radiographs.py); 0.9.0: text and shapes on a field
    # among the negatives.
    "cxr": Recipe(steps=3200, pretrain_steps=400, version="0.9.0", image_size=256, real=True,
                  model={"width": 24, "unshuffle": 2}),
    "echo_doppler": Recipe(steps=800, version="0.4.0", image_size=128),
}


def build(modality: str, out: Path, work: Path, *, data: tuple[str, ...] = ()) -> Path:
    """Train (or resume) the recipe's runs, the `compare` grid's (pretrain and full-joint, or
    scratch-joint) in work/<modality>/, so that `umsrep model compare` with the same settings
    and --out reuses them; export the last into out/<modality>."""
    recipe = RECIPES[modality]
    if recipe.real and not data:
        raise TrainingError(f"the {modality} bundle trains on real data: give --data folders "
                            "(jsrt-scr and nih-cxr8, see ../shared/data/README.md)")
    root = work / modality
    runs = grid(modality, root, steps=recipe.steps,
                pretrain_steps=recipe.pretrain_steps or recipe.steps, batch=16,
                image_size=recipe.image_size, seed=0, data=data if recipe.real else (),
                model=dict(recipe.model))
    if recipe.pretrain_steps:  # scored once, at its end: it has no gates to reach
        train(runs["pretrain"], root / "pretrain", resume=True,
              val_every=recipe.pretrain_steps)
    name = "full-joint" if recipe.pretrain_steps else "scratch-joint"
    train(runs[name], root / name, resume=True)  # validated every 100 steps, as compare's
    return export(root / name, out / modality, name=modality, version=recipe.version)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modality", choices=sorted(RECIPES), action="append")
    parser.add_argument("--data", nargs="+", default=[], metavar="DIR",
                        help="real data set folders for cxr (jsrt-scr, nih-cxr8)")
    parser.add_argument("--out", type=Path, default=BUNDLES_DIR)
    parser.add_argument("--work", type=Path, default=Path("runs"),
                        help="where the training runs live (default ./runs)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch threads (default: every core this process may use)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"training with {args.threads} torch threads")
    for modality in args.modality or sorted(RECIPES):
        print(build(modality, args.out, args.work, data=tuple(args.data)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
