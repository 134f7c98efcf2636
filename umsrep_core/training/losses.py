"""Task losses, and the weighted multi-task sum that joint fine-tuning minimises.

denoise: L1 to the clean image, where there is one (data.NO_TARGET: a letterboxed whole image);
segment: BCE + soft Dice (multi-label), over the images that have masks (NaN masks: none);
classify: cross-entropy over the images with a class; with radiographs (radiographs.py) a chest
whose class is unknown (CHEST) is scored on not being OTHER, the last class (-log of the other
classes' probability together), and NO_CLASS is not scored.
Weights: the L1 is small in value, so the denoising term is scaled up. The chest classifier
learns slowest (a small nodule in a 128-pixel image): at 1.5 its held-out AUC rose from 0.91 to
0.96 against 0.5, for the same segmentation and denoising.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from umsrep_core.training.data import CHEST, Batch

__all__ = ["WEIGHTS", "dice_loss", "loss_terms", "multitask_loss"]

WEIGHTS = {"denoise": 5.0, "segment": 1.0, "classify": 1.5}


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits)
    inter = (p * target).sum((2, 3))
    return (1 - (2 * inter + 1) / (p.sum((2, 3)) + target.sum((2, 3)) + 1)).mean()


def loss_terms(head: str, out: torch.Tensor, batch: Batch) -> list[torch.Tensor]:
    """The weighted terms of one head's loss."""
    _, clean, masks, labels = batch
    if head == "denoise":  # L1 where there is a target (data.NO_TARGET: a whole image)
        known = clean.isfinite()
        error = (out - clean.nan_to_num()).abs() * known
        return [WEIGHTS[head] * error.sum() / known.sum().clamp(min=1)]
    if head == "segment":
        known = masks[:, 0, 0, 0].isfinite()
        out, masks = out[known], masks[known]
        if not len(masks):  # no image of this batch has masks: a zero that keeps the graph
            return [out.sum()]
        return [WEIGHTS[head] * F.binary_cross_entropy_with_logits(out, masks),
                WEIGHTS[head] * dice_loss(out, masks)]
    scored = labels >= CHEST
    if not scored.any():
        return [out.sum() * 0]
    log_p = F.log_softmax(out[scored], dim=1)
    target = labels[scored]
    chest = torch.logsumexp(log_p[:, :-1], dim=1)  # log P(not the last class)
    own = log_p.gather(1, target.clamp(min=0)[:, None])[:, 0]
    return [WEIGHTS[head] * -torch.where(target >= 0, own, chest).mean()]


def multitask_loss(out: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
    """The weighted sum over every head in `out`."""
    terms = [t for head, value in out.items() for t in loss_terms(head, value, batch)]
    return torch.stack(terms).sum()
