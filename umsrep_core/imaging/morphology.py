"""Binary morphology on masks: the largest connected piece, holes filled.

A lung or a heart is one piece without holes; a segmentation network's mask of one may have
a speck elsewhere or a pinhole, and a speck beside the thorax moves the thoracic width of the
cardiothoracic ratio by its whole distance. Pieces are found on runs (the row segments of a
mask) joined with union-find, 8-connected: no scipy, and a few milliseconds for a 256-pixel
mask, whose rows hold a few runs each.
"""

from __future__ import annotations

import numpy as np

__all__ = ["connected_runs", "largest_component", "one_solid_piece"]


def connected_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The runs of a 2-D bool mask, (row, start, end) half-open, and each run's piece: a
    representative run index, equal for runs of one 8-connected piece."""
    edges = np.diff(np.pad(mask.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    rows, starts = np.nonzero(edges == 1)  # row-major: starts and ends pair up
    ends = np.nonzero(edges == -1)[1]
    parent = np.arange(len(rows))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first = np.searchsorted(rows, np.arange(mask.shape[0] + 1))  # each row's first run
    for r in range(1, mask.shape[0]):
        a, b = first[r - 1], first[r]  # runs of the row above and of this row, by column
        while a < first[r] and b < first[r + 1]:
            if starts[a] <= ends[b] and starts[b] <= ends[a]:  # 8-connected: diagonals too
                parent[root(b)] = root(a)
            if ends[a] < ends[b]:  # the run that ends first can touch nothing further on
                a += 1
            else:
                b += 1
    pieces = np.array([root(i) for i in range(len(rows))], dtype=np.int64)
    return rows, starts, ends, pieces


def _paint(shape: tuple[int, ...], rows: np.ndarray, starts: np.ndarray, ends: np.ndarray
           ) -> np.ndarray:
    out = np.zeros(shape, bool)
    for r, s, e in zip(rows, starts, ends, strict=True):
        out[r, s:e] = True
    return out


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected piece of a 2-D bool mask (an empty mask stays empty)."""
    mask = np.asarray(mask, dtype=bool)
    rows, starts, ends, pieces = connected_runs(mask)
    if not len(rows):
        return np.zeros(mask.shape, bool)
    sizes = np.bincount(pieces, weights=ends - starts)
    keep = pieces == np.argmax(sizes)
    return _paint(mask.shape, rows[keep], starts[keep], ends[keep])


def one_solid_piece(mask: np.ndarray) -> np.ndarray:
    """The largest piece of `mask` with its holes filled: the background pieces that do not
    reach the image border become foreground."""
    piece = largest_component(mask)
    rows, starts, ends, pieces = connected_runs(~piece)
    h, w = piece.shape
    on_border = (rows == 0) | (rows == h - 1) | (starts == 0) | (ends == w)
    outside = np.isin(pieces, pieces[on_border])
    solid: np.ndarray = ~_paint(piece.shape, rows[outside], starts[outside], ends[outside])
    return solid
