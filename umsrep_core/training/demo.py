"""The demo bundles `cxr` and `echo_doppler`: one reproducible command, phantoms only.

    python -m umsrep_core.training.demo [--modality cxr|echo_doppler] [--steps N] [--budget S]

Joint multi-task training of the shared encoder with its three heads (weighted sum of an L1
denoising loss, BCE + Dice segmentation losses and a cross-entropy classification loss) on
phantoms generated as the node's Predictor will see them: chest images at the model size,
Doppler strips cropped to their spectral region and letterboxed. Fixed seeds; a pool of
phantoms renewed a little at every step, because generating them costs more than a step.
NOT FOR CLINICAL USE: the weights know nothing but phantoms.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from umsrep_core.imaging.geometry import Letterbox
from umsrep_core.imaging.us import region_box
from umsrep_core.models.bundle import BUNDLES_DIR, save_bundle
from umsrep_core.models.umsrep import ModelConfig, UMSRep
from umsrep_core.phantoms.chest import chest_batch
from umsrep_core.phantoms.doppler import DOPPLER_TYPES, make_doppler

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # images, clean, masks, labels

SIZE = 128
BATCH = 16
POOL = 256
RENEW_EVERY = 10  # steps between renewing BATCH phantoms of the pool
LABELS = {"cxr": (["right_lung", "left_lung", "heart"], ["normal", "abnormal"]),
          "echo_doppler": (["envelope"], list(DOPPLER_TYPES))}
# Loss weights: the denoising L1 is small in value, the classifier learns fast.
W_DENOISE, W_CLASSIFY = 5.0, 0.5


def doppler_arrays(seeds: Iterable[int], size: int) -> Arrays:
    images, clean, masks, labels = [], [], [], []
    for seed in seeds:
        p = make_doppler(seed)
        crop = region_box(p.region) if p.region is not None else None
        box = Letterbox.fit(p.image.shape, size, crop=crop)
        images.append(box.to_model(p.image.astype(np.float32) / 255.0))  # as read_frames
        clean.append(box.to_model(p.clean.astype(np.float32)))
        masks.append(box.to_model(p.envelope.astype(np.float32)) > 0.5)
        labels.append(DOPPLER_TYPES.index(p.kind))
    return (np.stack(images)[:, None], np.stack(clean)[:, None],
            np.stack(masks)[:, None].astype(np.float32), np.array(labels, np.int64))


def phantom_arrays(modality: str, seeds: Iterable[int], size: int) -> Arrays:
    if modality == "cxr":
        b = chest_batch(list(seeds), size)
        return b["images"], b["clean"], b["masks"], b["labels"]
    return doppler_arrays(seeds, size)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits)
    inter = (p * target).sum((2, 3))
    return (1 - (2 * inter + 1) / (p.sum((2, 3)) + target.sum((2, 3)) + 1)).mean()


def joint_loss(out: dict[str, torch.Tensor], clean: torch.Tensor, masks: torch.Tensor,
               labels: torch.Tensor) -> torch.Tensor:
    return (W_DENOISE * F.l1_loss(out["denoise"], clean)
            + F.binary_cross_entropy_with_logits(out["segment"], masks)
            + dice_loss(out["segment"], masks)
            + W_CLASSIFY * F.cross_entropy(out["classify"], labels))


def train(modality: str, *, steps: int, budget_s: float, size: int = SIZE, seed: int = 0,
          config: ModelConfig | None = None, pool_size: int = POOL,
          progress: bool = True) -> tuple[UMSRep, int]:
    """Train a model; returns it and the number of steps taken (the budget may stop it)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    seg, classes = LABELS[modality]
    model = UMSRep(config or ModelConfig(n_seg=len(seg), n_classes=len(classes),
                                         input_size=size))
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=steps)
    next_seed = seed * 1_000_000 + pool_size
    pool = phantom_arrays(modality, range(seed * 1_000_000, next_seed), size)
    started = time.monotonic()
    bar = tqdm(range(steps), desc=f"train {modality}", disable=not progress)
    step = 0
    for step in bar:
        if step and step % RENEW_EVERY == 0:
            fresh = phantom_arrays(modality, range(next_seed, next_seed + BATCH), size)
            next_seed += BATCH
            slots = rng.choice(pool_size, BATCH, replace=False)
            for array, new in zip(pool, fresh, strict=True):
                array[slots] = new
        pick = rng.choice(pool_size, BATCH, replace=False)
        x, clean, masks, labels = (torch.from_numpy(a[pick]) for a in pool)
        loss = joint_loss(model(x), clean, masks, labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if time.monotonic() - started > budget_s:
            break
    return model.eval(), step + 1


def build(modality: str, out: Path, *, steps: int, budget_s: float, seed: int = 0) -> Path:
    model, taken = train(modality, steps=steps, budget_s=budget_s, seed=seed)
    seg, classes = LABELS[modality]
    return save_bundle(model, {
        "name": modality, "version": "0.1.0", "modality": modality, "seg_labels": seg,
        "class_labels": classes, "normalisation": {},
        "training_data": f"synthetic phantoms (umsrep_core.phantoms), seed {seed}, joint "
                         f"multi-task from scratch, {taken} steps of {BATCH} at {SIZE} px"},
        out / modality)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modality", choices=sorted(LABELS), action="append")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--budget", type=float, default=900.0,
                        help="seconds per bundle at most (a safety stop: the steps decide)")
    parser.add_argument("--out", type=Path, default=BUNDLES_DIR)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for modality in args.modality or sorted(LABELS):
        print(build(modality, args.out, steps=args.steps, budget_s=args.budget,
                    seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
