"""Masks made one solid piece: the largest 8-connected piece, its holes filled."""

from __future__ import annotations

from collections import deque

import numpy as np

from umsrep_core.imaging.morphology import largest_component, one_solid_piece


def _largest_by_flood_fill(mask: np.ndarray) -> int:
    """The size of the largest 8-connected piece, pixel by pixel: the slow reference."""
    seen, best = np.zeros_like(mask), 0
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        queue, size = deque([start]), 0
        seen[start] = True
        while queue:
            y, x = queue.popleft()
            size += 1
            for ny in range(max(0, y - 1), min(mask.shape[0], y + 2)):
                for nx in range(max(0, x - 1), min(mask.shape[1], x + 2)):
                    if mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
        best = max(best, size)
    return best


def test_the_largest_piece_is_kept_with_its_diagonal_neighbours() -> None:
    mask = np.zeros((60, 60), bool)
    mask[5:40, 5:30] = True
    mask[40, 30] = True  # touches the block at a corner only: 8-connected, kept
    mask[50:55, 50:55] = True  # a speck elsewhere: dropped
    kept = largest_component(mask)
    assert kept.sum() == 35 * 25 + 1 and kept[40, 30] and not kept[52, 52]
    assert not largest_component(np.zeros((4, 4), bool)).any()


def test_the_largest_piece_agrees_with_a_flood_fill_on_noise() -> None:
    for seed in range(3):
        noise = np.random.default_rng(seed).random((48, 64)) > 0.55
        kept = largest_component(noise)
        assert kept.sum() == _largest_by_flood_fill(noise)
        assert (kept <= noise).all() and _largest_by_flood_fill(kept) == kept.sum()


def test_holes_are_filled_but_not_the_background_that_reaches_the_border() -> None:
    block = np.zeros((40, 40), bool)
    block[5:35, 5:35] = True
    block[8:16, 8:16] = False  # a hole: filled
    block[20:30, 15:25] = False  # a bay, open to the border through a channel: stays open
    block[30:40, 18:22] = False
    solid = one_solid_piece(block)
    assert solid[12, 12] and not solid[25, 20] and not solid[39, 20]
    assert (solid >= block).all() and solid.sum() == block.sum() + 64
