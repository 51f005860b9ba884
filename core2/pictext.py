"""Text on the pack's pictures (loss curve, comparison grids, workflow title cards), drawn with PIL.

One font for all of them: a common system TrueType font, else PIL's own (scalable from Pillow 10.1). PIL's own font
lacks '²' and a few symbols: draw_text draws a missing '²' as a small raised '2' and spells missing symbols in ASCII,
so no picture shows the font's "no glyph" box. Plain PIL.
"""
from __future__ import annotations

from functools import lru_cache

from PIL import ImageDraw, ImageFont

FONT_FILES = ("DejaVuSans.ttf", "Arial.ttf", "LiberationSans-Regular.ttf")
ASCII_FOR = {"→": "->", "≥": ">=", "≤": "<=", "×": "x", "σ": "sigma", "—": "-", "–": "-", "…": "..."}


@lru_cache(maxsize=32)
def font(size: int):
    for name in FONT_FILES:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow before 10.1: a fixed-size bitmap font
        return ImageFont.load_default()


def missing(fnt, ch: str) -> bool:
    """Whether the font draws `ch` as its "no glyph" box."""
    try:
        return bytes(fnt.getmask(ch)) == bytes(fnt.getmask("\ue000"))
    except Exception:  # noqa: BLE001 - bitmap fonts without the character
        return True


def _drawable(fnt, s: str) -> list[str]:
    """s with the symbols the font lacks spelled in ASCII, split at each '²' the font lacks."""
    s = "".join(ASCII_FOR[c] if c in ASCII_FOR and missing(fnt, c) else c for c in s)
    return s.split("²") if "²" in s and missing(fnt, "²") else [s]


def draw_text(d: ImageDraw.ImageDraw, xy, s: str, fill, size: int = 15) -> float:
    """d.text in font(size), as the font can draw it; returns the width drawn."""
    fnt, small = font(size), font(max(8, size * 2 // 3))
    x0 = x = xy[0]
    for k, part in enumerate(_drawable(fnt, s)):
        if k:
            d.text((x, xy[1] - size // 5), "2", fill=fill, font=small)
            x += d.textlength("2", font=small)
        d.text((x, xy[1]), part, fill=fill, font=fnt)
        x += d.textlength(part, font=fnt)
    return x - x0


def text_width(s: str, size: int = 15) -> int:
    """The width draw_text(…, s, …, size) takes."""
    fnt, small = font(size), font(max(8, size * 2 // 3))
    parts = _drawable(fnt, s)
    return round(sum(fnt.getlength(p) for p in parts) + (len(parts) - 1) * small.getlength("2"))


def wrap(s: str, max_width: int, size: int = 15) -> list[str]:
    """s broken at spaces into lines that draw_text(…, size) draws within max_width (a single over-long word stays
    whole on its own line)."""
    lines, line = [], ""
    for word in s.split():
        trial = f"{line} {word}" if line else word
        if line and text_width(trial, size) > max_width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + [line] if line else lines
