"""A 3x5 pixel font for burned-in text (markers, scale labels), so the phantoms need numpy only."""

from __future__ import annotations

import numpy as np

# Each glyph: five rows of three bits, top to bottom.
_GLYPHS = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111",
    "3": "111001111001111", "4": "101101111001001", "5": "111100111001111",
    "6": "111100111101111", "7": "111001001010010", "8": "111101111101111",
    "9": "111101111001111", "-": "000000111000000", ".": "000000000000010",
    "/": "001001010100100", ":": "000010000010000", " ": "000000000000000",
    "A": "010101111101101", "C": "011100100100011", "D": "110101101101110",
    "E": "111100110100111", "H": "101101111101101", "I": "111010010010111",
    "K": "101101110101101", "L": "100100100100111", "M": "101111111101101",
    "N": "110101101101101", "P": "110101110100100", "R": "110101110101101",
    "S": "011100010001110", "T": "111010010010010", "V": "101101101101010",
    "W": "101101111111101", "X": "101101010101101", "Z": "111001010100111",
}
GLYPH_CHARS = "".join(sorted(_GLYPHS))
_BITMAPS = {c: np.array(list(bits), dtype=np.uint8).reshape(5, 3).astype(bool)
            for c, bits in _GLYPHS.items()}


def text_bitmap(text: str, scale: int = 1) -> np.ndarray:
    """Bool bitmap of `text` (unknown characters render as blanks), `scale` pixels per dot."""
    gap = np.zeros((5, 1), dtype=bool)
    parts: list[np.ndarray] = []
    for ch in text.upper():
        parts += [_BITMAPS.get(ch, _BITMAPS[" "]), gap]
    bitmap = np.concatenate(parts[:-1] or [gap], axis=1)
    return np.kron(bitmap, np.ones((scale, scale), dtype=bool)).astype(bool)


def draw_text(image: np.ndarray, text: str, row: int, col: int, *, scale: int = 1,
              value: float = 1.0, align: str = "left") -> None:
    """Burn `text` into `image` in place, top-left (or top-right with align="right") at (row, col).

    Clipped at the image borders.
    """
    bitmap = text_bitmap(text, scale)
    if align == "right":
        col -= bitmap.shape[1] - 1
    r0, c0 = max(row, 0), max(col, 0)
    r1 = min(row + bitmap.shape[0], image.shape[0])
    c1 = min(col + bitmap.shape[1], image.shape[1])
    if r1 <= r0 or c1 <= c0:
        return
    crop = bitmap[r0 - row:r1 - row, c0 - col:c1 - col]
    image[r0:r1, c0:c1][crop] = value
