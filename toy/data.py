"""The toy world's pictures: one coloured shape on a dark background, with a prompt and attribute labels.

Plain torch, no ComfyUI. Deterministic from a torch.Generator: the same seed gives the same images.

    a red triangle at the top        shape ∈ SHAPES, colour ∈ COLOURS, position ∈ POSITIONS
    a blue cross in the centre       4 × 6 × 5 = 120 combinations, 32×32 RGB, values 0..1

Images are rendered with 4× supersampling (anti-aliased edges), a small jitter in size, place, hue and background
so that no two pictures of one prompt are identical.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

RESOLUTION = 32
SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {  # RGB 0..1
    "red": (0.92, 0.12, 0.10),
    "green": (0.12, 0.80, 0.16),
    "blue": (0.14, 0.26, 0.95),
    "yellow": (0.95, 0.88, 0.10),
    "magenta": (0.88, 0.14, 0.85),
    "cyan": (0.10, 0.85, 0.90),
}
COLOUR_NAMES = tuple(COLOURS)
POSITIONS = ("top", "bottom", "left", "right", "centre")
# Centre of the shape for each position, as a fraction of the image side (x, y); y grows downwards.
_PLACES = {"top": (0.5, 0.26), "bottom": (0.5, 0.74), "left": (0.26, 0.5), "right": (0.74, 0.5), "centre": (0.5, 0.5)}
_PHRASES = {"top": "at the top", "bottom": "at the bottom", "left": "on the left", "right": "on the right",
            "centre": "in the centre"}
SYNONYMS = {"center": "centre", "middle": "centre", "upper": "top", "lower": "bottom"}
ATTRIBUTES = ("shape", "colour", "position")
NUM_CLASSES = {"shape": len(SHAPES), "colour": len(COLOURS), "position": len(POSITIONS)}


@dataclass(frozen=True)
class Attributes:
    shape: str
    colour: str
    position: str

    @property
    def prompt(self) -> str:
        return prompt_for(self.shape, self.colour, self.position)

    @property
    def label(self) -> tuple[int, int, int]:
        return SHAPES.index(self.shape), COLOUR_NAMES.index(self.colour), POSITIONS.index(self.position)

    @classmethod
    def from_label(cls, label) -> "Attributes":
        s, c, p = (int(v) for v in label)
        return cls(SHAPES[s], COLOUR_NAMES[c], POSITIONS[p])


def prompt_for(shape: str, colour: str, position: str) -> str:
    return f"a {colour} {shape} {_PHRASES[position]}"


def all_combinations() -> list[Attributes]:
    return [Attributes(s, c, p) for s in SHAPES for c in COLOUR_NAMES for p in POSITIONS]


def parse_prompt(prompt: str) -> Attributes | None:
    """The attributes a prompt names, or None when it does not name one shape, one colour and one position."""
    words = [SYNONYMS.get(w, w) for w in re.findall(r"[a-z]+", prompt.lower())]
    found = {}
    for key, names in (("shape", SHAPES), ("colour", COLOUR_NAMES), ("position", POSITIONS)):
        hits = {w for w in words if w in names}
        if len(hits) != 1:
            return None
        found[key] = hits.pop()
    return Attributes(**found)


def random_labels(batch: int, generator: torch.Generator) -> torch.Tensor:
    """[B, 3] long: shape, colour, position indices, uniform over the 120 combinations."""
    return torch.stack([torch.randint(NUM_CLASSES[a], (batch,), generator=generator) for a in ATTRIBUTES], dim=1)


def _masks(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inside-masks of every shape on unit-radius coordinates u (right), v (down): [len(SHAPES), *u.shape]."""
    circle = u * u + v * v <= 1.0
    square = (u.abs() <= 0.84) & (v.abs() <= 0.84)
    triangle = (v <= 0.8) & (v >= -1.0) & (u.abs() <= (v + 1.0) / 1.8 * 1.05)
    cross = ((u.abs() <= 0.32) & (v.abs() <= 1.0)) | ((v.abs() <= 0.32) & (u.abs() <= 1.0))
    return torch.stack([circle, square, triangle, cross]).float()


def render(labels: torch.Tensor, generator: torch.Generator, resolution: int = RESOLUTION,
           supersample: int = 4) -> torch.Tensor:
    """Pictures for [B, 3] labels: [B, 3, H, W] float in 0..1."""
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1, 3)
    b = labels.shape[0]
    side = resolution * supersample
    px = (torch.arange(side, dtype=torch.float32) + 0.5) / supersample  # pixel-unit coordinates
    yy, xx = torch.meshgrid(px, px, indexing="ij")
    places = torch.tensor([_PLACES[p] for p in POSITIONS]) * resolution
    centre = places[labels[:, 2]] + (torch.rand(b, 2, generator=generator) - 0.5) * 0.12 * resolution
    radius = resolution * (0.16 + 0.05 * torch.rand(b, generator=generator))
    u = (xx[None] - centre[:, 0, None, None]) / radius[:, None, None]
    v = (yy[None] - centre[:, 1, None, None]) / radius[:, None, None]
    masks = _masks(u, v)  # [S, B, side, side]
    mask = masks[labels[:, 0], torch.arange(b)]  # [B, side, side]
    mask = torch.nn.functional.avg_pool2d(mask[:, None], supersample)  # [B, 1, H, W] coverage
    base = torch.tensor([COLOURS[c] for c in COLOUR_NAMES])[labels[:, 1]]  # [B, 3]
    colour = (base * (0.85 + 0.15 * torch.rand(b, 1, generator=generator))).clamp(0, 1)
    background = 0.04 + 0.14 * torch.rand(b, 1, generator=generator)
    bg = background[:, :, None, None].expand(b, 3, resolution, resolution)
    img = bg * (1 - mask) + colour[:, :, None, None] * mask
    return img.clamp(0, 1)


@dataclass
class Batch:
    images: torch.Tensor  # [B, 3, H, W], 0..1
    labels: torch.Tensor  # [B, 3] long
    prompts: list[str]


def sample_batch(batch: int, generator: torch.Generator, resolution: int = RESOLUTION) -> Batch:
    labels = random_labels(batch, generator)
    images = render(labels, generator, resolution)
    prompts = [Attributes.from_label(l).prompt for l in labels.tolist()]
    return Batch(images, labels, prompts)


def dataset(n: int, seed: int = 0, resolution: int = RESOLUTION) -> Batch:
    """n pictures, deterministic from seed."""
    return sample_batch(n, torch.Generator().manual_seed(seed), resolution)

