"""A labelled comparison grid drawn with PIL: one row per setting (a label on the left), one column per picture of a
batch, a caption under each picture (e.g. its model passes and seconds). Plain numpy / PIL."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
MUTED = (90, 90, 90)
MIN_TILE = 128  # pictures are enlarged (nearest neighbour, integer factor) to at least this width, so text fits
FONT_FILES = ("DejaVuSans.ttf", "Arial.ttf", "LiberationSans-Regular.ttf")


@dataclass
class GridSpec:
    """What a grid shows: rows[r] labels row r; captions[r][c] goes under picture c of row r; title on top."""

    rows: list[str]
    columns: int
    captions: list[list[str]] = field(default_factory=list)
    title: str = ""

    @property
    def count(self) -> int:
        return len(self.rows) * self.columns


def font(size: int):
    """A scalable font: a common system TrueType font, else PIL's own (which lacks a few glyphs, see text())."""
    for name in FONT_FILES:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow before 10.1: a fixed-size bitmap font
        return ImageFont.load_default()


def _missing(fnt, ch: str) -> bool:
    """Whether the font draws `ch` as its "no glyph" box."""
    try:
        return bytes(fnt.getmask(ch)) == bytes(fnt.getmask("\ue000"))
    except Exception:  # noqa: BLE001 - bitmap fonts without the character
        return True


def text(fnt, s: str) -> str:
    """`s` as the font can draw it: '²' becomes '2' in a font without it (PIL's default has none)."""
    return s.replace("²", "2") if "²" in s and _missing(fnt, "²") else s


def _width(draw, fnt, s: str) -> int:
    left, _, right, _ = draw.textbbox((0, 0), s, font=fnt)
    return int(right - left)


def draw(images: np.ndarray, spec: GridSpec, font_size: int = 15) -> Image.Image:
    """images: [N, H, W, 3] floats in 0..1, row-major (N = rows × columns). Returns the grid as an RGB image."""
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"a grid needs a batch of pictures [N, H, W, C]; got shape {list(images.shape)}")
    if images.shape[0] != spec.count:
        raise ValueError(f"the grid has {len(spec.rows)} rows × {spec.columns} columns = {spec.count} pictures, but "
                         f"{images.shape[0]} came in: connect the decoded output of the CoRe² Compare node it came from.")
    pics = (np.clip(images[..., :3], 0, 1) * 255).round().astype(np.uint8)
    if pics.shape[-1] == 1:
        pics = np.repeat(pics, 3, axis=-1)
    k = max(1, -(-MIN_TILE // pics.shape[2]))
    h, w = pics.shape[1] * k, pics.shape[2] * k
    fnt, small = font(font_size), font(max(8, font_size - 3))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad, line = 8, font_size + 6
    label_w = max([_width(probe, fnt, text(fnt, r)) for r in spec.rows] + [0]) + 2 * pad
    top = line + pad if spec.title else pad
    cell_h = h + line + pad
    img = Image.new("RGB", (label_w + spec.columns * (w + pad) + pad, top + len(spec.rows) * cell_h), BACKGROUND)
    d = ImageDraw.Draw(img)
    if spec.title:
        d.text((pad, pad // 2), text(fnt, spec.title), fill=INK, font=fnt)
    for r, label in enumerate(spec.rows):
        y = top + r * cell_h
        d.text((pad, y + h // 2 - font_size // 2), text(fnt, label), fill=INK, font=fnt)
        for c in range(spec.columns):
            x = label_w + c * (w + pad)
            tile = Image.fromarray(pics[r * spec.columns + c]).resize((w, h), Image.NEAREST)
            img.paste(tile, (x, y))
            cap = spec.captions[r][c] if r < len(spec.captions) and c < len(spec.captions[r]) else ""
            d.text((x, y + h + 3), text(small, cap), fill=MUTED, font=small)
    return img


def parse_list(s: str, kind, name: str) -> list:
    """'3, 10' → [3, 10] (kind int or float); a clear error on anything else."""
    items = [p for p in str(s).replace(";", ",").split(",") if p.strip()]
    try:
        values = [kind(p.strip()) for p in items]
    except ValueError:
        raise ValueError(f"{name}: '{s}' is not a comma-separated list of {kind.__name__} values (e.g. "
                         f"{'3, 10' if kind is int else '1.0, 1.5'}).") from None
    if not values:
        raise ValueError(f"{name} is empty: give at least one value (e.g. {'3, 10' if kind is int else '1.5'}).")
    return values
