"""A labelled comparison grid drawn with PIL: one row per setting (a label on the left), one column per picture of a
batch, a caption under each picture (e.g. its model passes and seconds). Text by core2/pictext.py. Plain numpy / PIL."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from .pictext import draw_text, text_width

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
MUTED = (90, 90, 90)
MIN_TILE = 128  # pictures are enlarged (nearest neighbour, integer factor) to at least this width, so text fits


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
    small = max(8, font_size - 3)
    pad, line = 8, font_size + 6
    label_w = max([text_width(r, font_size) for r in spec.rows] + [0]) + 2 * pad
    top = line + pad if spec.title else pad
    cell_h = h + line + pad
    img = Image.new("RGB", (label_w + spec.columns * (w + pad) + pad, top + len(spec.rows) * cell_h), BACKGROUND)
    d = ImageDraw.Draw(img)
    if spec.title:
        draw_text(d, (pad, pad // 2), spec.title, INK, font_size)
    for r, label in enumerate(spec.rows):
        y = top + r * cell_h
        draw_text(d, (pad, y + h // 2 - font_size // 2), label, INK, font_size)
        for c in range(spec.columns):
            x = label_w + c * (w + pad)
            tile = Image.fromarray(pics[r * spec.columns + c]).resize((w, h), Image.NEAREST)
            img.paste(tile, (x, y))
            cap = spec.captions[r][c] if r < len(spec.captions) and c < len(spec.captions[r]) else ""
            draw_text(d, (x, y + h + 3), cap, MUTED, small)
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
