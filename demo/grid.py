"""A labelled side-by-side grid of toy pictures (rows = prompts, columns = methods), upscaled so 32×32 is visible."""
from __future__ import annotations

import io
from pathlib import Path

import torch


_FONTS = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "DejaVuSans.ttf", "Arial.ttf")


def _font(ImageFont):
    """A TrueType font with "²" where one is found, else PIL's default (plain=True)."""
    for name in _FONTS:
        try:
            return ImageFont.truetype(name, 11), False
        except OSError:
            continue
    return ImageFont.load_default(), True


def render_grid(images: list[list[torch.Tensor]], row_labels: list[str], col_labels: list[str], path: Path,
                scale: int = 4, title: str = "") -> Path:
    """images[r][c]: one [H, W, 3] picture (0..1). Nearest-neighbour upscaling by `scale`. Writes a PNG."""
    from PIL import Image, ImageDraw, ImageFont

    font, plain = _font(ImageFont)
    if plain:  # the bitmap fallback font has no "²"
        row_labels = [t.replace("²", "2") for t in row_labels]
        col_labels = [t.replace("²", "2") for t in col_labels]
        title = title.replace("²", "2")
    h, w = images[0][0].shape[:2]
    cell_w, cell_h, pad = w * scale, h * scale, 6
    left = max(8 + int(font.getlength(t)) for t in row_labels) + 10
    col_lines = [c.split("\n") for c in col_labels]
    line_h = 13
    top = (line_h * max(len(c) for c in col_lines) + 10) + (line_h + 6 if title else 0)
    width = left + len(col_labels) * (cell_w + pad) + pad
    height = top + len(row_labels) * (cell_h + pad) + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y0 = 4
    if title:
        draw.text((8, y0), title, fill=(0, 0, 0), font=font)
        y0 += line_h + 6
    for c, lines in enumerate(col_lines):
        x = left + pad + c * (cell_w + pad)
        for k, line in enumerate(lines):
            tw = font.getlength(line)
            draw.text((x + (cell_w - tw) / 2, y0 + k * line_h), line, fill=(0, 0, 0), font=font)
    for r, label in enumerate(row_labels):
        y = top + pad + r * (cell_h + pad)
        draw.text((8, y + cell_h / 2 - 6), label, fill=(0, 0, 0), font=font)
        for c in range(len(col_labels)):
            arr = (images[r][c].detach().float().clamp(0, 1).cpu().numpy() * 255).round().astype("uint8")
            tile = Image.fromarray(arr).resize((cell_w, cell_h), Image.NEAREST)
            canvas.paste(tile, (left + pad + c * (cell_w + pad), y))
    from comfyui_core2.core2.files import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    png = io.BytesIO()
    canvas.save(png, format="PNG")
    atomic_write_bytes(path, png.getvalue())
    return path
