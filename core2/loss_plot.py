"""A loss-curve picture drawn with PIL (no matplotlib): training loss and validation score against steps, log scale.
Text is drawn by core2/pictext.py (a '²' the font lacks comes out as a raised '2')."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from .pictext import draw_text, wrap

TRAIN = (70, 130, 220)
TRAIN_SMOOTH = (20, 60, 170)
VAL = (220, 90, 40)
REF = (120, 120, 120)


FONT_SIZE = 15


def _smooth(values, k):
    if len(values) < 3:
        return list(values)
    out, acc = [], values[0]
    a = 1.0 / max(1, k)
    for v in values:
        acc = acc + a * (v - acc)
        out.append(acc)
    return out


def draw(train: list, val: list, width: int = 768, height: int = 432, title: str = "CoRe² Reflect",
         val_label: str = "validation score", verdict: str | None = None) -> Image.Image:
    """train: [(step, loss)], val: [(step, validation score)]. Returns an RGB image.

    Both read 1.0 for the identity map (cfg = 1), drawn as a grey reference line. val_label names what the
    validation points are (the score of the training loss); verdict, if given, is written under the title.
    """
    img = Image.new("RGB", (width, height), (255, 255, 255))
    d = ImageDraw.Draw(img)
    verdict_lines = wrap(verdict, width - 60 - 10, FONT_SIZE) if verdict else []  # a long verdict wraps
    left, right, top, bottom = 60, width - 20, 30 + 20 * len(verdict_lines), height - 40
    draw_text(d, (left, 6), title, (0, 0, 0), FONT_SIZE + 2)
    colour = (150, 30, 30) if verdict and ("no better" in verdict or "barely" in verdict) else (20, 110, 40)
    for k, line in enumerate(verdict_lines):
        draw_text(d, (left, 28 + 20 * k), line, colour)
    pts = [(s, v) for s, v in train if v is not None and math.isfinite(v) and v > 0]
    vpts = [(s, v) for s, v in val if v is not None and math.isfinite(v) and v > 0]
    allv = [v for _, v in pts + vpts] + [1.0]
    lo, hi = math.log10(min(allv)), math.log10(max(allv))
    if hi - lo < 0.3:
        lo, hi = lo - 0.15, hi + 0.15
    smax = max([s for s, _ in pts + vpts] + [1])
    smin = min([s for s, _ in pts + vpts] + [0])

    def xy(s, v):
        x = left + (right - left) * (s - smin) / max(1, smax - smin)
        y = bottom - (bottom - top) * (math.log10(v) - lo) / (hi - lo)
        return x, y

    d.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    for e in range(math.floor(lo), math.ceil(hi) + 1):
        for m in (1, 2, 5):
            v = m * 10.0 ** e
            if lo <= math.log10(v) <= hi:
                _, y = xy(smin, v)
                d.line([left, y, right, y], fill=(230, 230, 230))
                draw_text(d, (4, y - 8), f"{v:g}", (0, 0, 0), FONT_SIZE - 2)
    for frac in (0, 0.25, 0.5, 0.75, 1.0):
        s = smin + frac * (smax - smin)
        x, _ = xy(s, 10 ** lo)
        draw_text(d, (x - 10, bottom + 4), f"{int(s)}", (0, 0, 0), FONT_SIZE - 2)
    _, y1 = xy(smin, 1.0)
    d.line([left, y1, right, y1], fill=REF, width=1)
    if len(pts) > 1:
        d.line([xy(s, v) for s, v in pts], fill=TRAIN + (0,), width=1)
        sm = _smooth([v for _, v in pts], max(1, len(pts) // 30))
        d.line([xy(s, v) for (s, _), v in zip(pts, sm)], fill=TRAIN_SMOOTH, width=2)
    if vpts:
        if len(vpts) > 1:
            d.line([xy(s, v) for s, v in vpts], fill=VAL, width=2)
        for s, v in vpts:
            x, y = xy(s, v)
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=VAL)
    d.rectangle([right - 336, top + 3, right - 3, top + 62], fill=(255, 255, 255), outline=(210, 210, 210))
    draw_text(d, (right - 330, top + 6), "train loss", TRAIN_SMOOTH)
    draw_text(d, (right - 330, top + 24), val_label, VAL)
    draw_text(d, (right - 330, top + 42), "1.0 = cfg 1 (no weak model)", REF)
    draw_text(d, (left + (right - left) // 2 - 15, height - 20), "step", (0, 0, 0))
    return img


def to_array(img: Image.Image) -> np.ndarray:
    """HxWx3 float32 in 0..1."""
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
