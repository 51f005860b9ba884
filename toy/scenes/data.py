"""The scenes world's pictures: two objects in a spatial relation on a textured background, with prompts and labels.

Plain torch, no ComfyUI. Deterministic from a torch.Generator.

    a small red triangle left of a big blue circle

Each object has a shape (4), a colour (6) and a size (2); the relation is left of / right of / above / below.
(4·6·2)²·4 = 9216 prompts, 64×64 RGB pictures. The background is a random dark tint with a soft gradient and faint
stripes that no prompt names (the model has to draw it, the reader has to ignore it).

Labels come in two forms:
* a *prompt label* [B, 7]: first object (shape, colour, size), second object (shape, colour, size), relation;
* a *picture label* [B, 7]: axis (0 horizontal, 1 vertical), then the left/top object and the right/bottom object.
  This is what a picture shows without knowing the words ("A left of B" and "B right of A" are one picture), and
  what the reader predicts. canonical() turns prompt labels into picture labels.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from ..data import COLOURS, SHAPES, _masks

RESOLUTION = 64
COLOUR_NAMES = tuple(COLOURS)
SIZES = ("small", "big")
RELATIONS = ("left of", "right of", "above", "below")
OBJECT_ATTRIBUTES = ("shape", "colour", "size")
PROMPT_FIELDS = ("shape1", "colour1", "size1", "shape2", "colour2", "size2", "relation")
PICTURE_FIELDS = ("axis", "shape_a", "colour_a", "size_a", "shape_b", "colour_b", "size_b")
PICTURE_CLASSES = dict(zip(PICTURE_FIELDS, (2, len(SHAPES), len(COLOUR_NAMES), len(SIZES),
                                            len(SHAPES), len(COLOUR_NAMES), len(SIZES))))
_PROMPT_CLASSES = (len(SHAPES), len(COLOUR_NAMES), len(SIZES), len(SHAPES), len(COLOUR_NAMES), len(SIZES),
                   len(RELATIONS))
_RADIUS = {"small": 0.085, "big": 0.16}  # fraction of the picture side
SYNONYMS = {"large": "big", "tiny": "small", "center": "centre", "on": "", "to": "", "the": ""}


@dataclass(frozen=True)
class Scene:
    shape1: str
    colour1: str
    size1: str
    shape2: str
    colour2: str
    size2: str
    relation: str

    @property
    def prompt(self) -> str:
        return (f"a {self.size1} {self.colour1} {self.shape1} {self.relation} "
                f"a {self.size2} {self.colour2} {self.shape2}")

    @property
    def label(self) -> tuple[int, ...]:
        return (SHAPES.index(self.shape1), COLOUR_NAMES.index(self.colour1), SIZES.index(self.size1),
                SHAPES.index(self.shape2), COLOUR_NAMES.index(self.colour2), SIZES.index(self.size2),
                RELATIONS.index(self.relation))

    @classmethod
    def from_label(cls, label) -> "Scene":
        s1, c1, z1, s2, c2, z2, r = (int(v) for v in label)
        return cls(SHAPES[s1], COLOUR_NAMES[c1], SIZES[z1], SHAPES[s2], COLOUR_NAMES[c2], SIZES[z2], RELATIONS[r])


def parse_prompt(prompt: str) -> Scene | None:
    """The scene a prompt names ("a small red triangle left of a big blue circle"), or None."""
    text = " ".join(SYNONYMS.get(w, w) for w in re.findall(r"[a-z]+", prompt.lower()))
    obj = rf"(?:an? )?({'|'.join(SIZES)}) ({'|'.join(COLOUR_NAMES)}) ({'|'.join(SHAPES)})"
    m = re.fullmatch(rf"\s*{obj}\s+({'|'.join(RELATIONS)})\s+{obj}\s*", text)
    if m is None:
        return None
    z1, c1, s1, rel, z2, c2, s2 = m.groups()
    return Scene(s1, c1, z1, s2, c2, z2, rel)


N_SCENES = math.prod(_PROMPT_CLASSES)  # 9216 prompts


def label_of_index(index: int) -> list[int]:
    """The prompt label [7] of scene number `index` (0 … N_SCENES − 1; mixed radix over _PROMPT_CLASSES)."""
    if not 0 <= index < N_SCENES:
        raise ValueError(f"scene index {index} is outside 0 … {N_SCENES - 1}")
    label = []
    for n in reversed(_PROMPT_CLASSES):
        index, v = divmod(index, n)
        label.append(v)
    return label[::-1]


def random_labels(batch: int, generator: torch.Generator) -> torch.Tensor:
    """[B, 7] prompt labels, uniform over the 9216 scenes."""
    return torch.stack([torch.randint(n, (batch,), generator=generator) for n in _PROMPT_CLASSES], dim=1)


def canonical(labels: torch.Tensor) -> torch.Tensor:
    """Prompt labels [B, 7] -> picture labels [B, 7] (axis, left/top object, right/bottom object)."""
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1, 7)
    first, second, rel = labels[:, 0:3], labels[:, 3:6], labels[:, 6]
    first_is_a = (rel == 0) | (rel == 2)  # "left of" / "above": the first object is left/top
    a = torch.where(first_is_a[:, None], first, second)
    b = torch.where(first_is_a[:, None], second, first)
    axis = (rel >= 2).long()
    return torch.cat([axis[:, None], a, b], dim=1)


def noisy_labels(labels: torch.Tensor, noise: float, generator: torch.Generator) -> torch.Tensor:
    """Each field replaced, with probability `noise`, by a random value: imperfect training captions."""
    labels = labels.clone()
    for i, n in enumerate(_PROMPT_CLASSES):
        swap = torch.rand(len(labels), generator=generator) < noise
        labels[swap, i] = torch.randint(n, (int(swap.sum()),), generator=generator)
    return labels


def _rand(gen: torch.Generator, device, *shape) -> torch.Tensor:
    """Uniform draws from the CPU generator, moved to `device` (the same pictures on every device)."""
    return torch.rand(*shape, generator=gen).to(device)


def _background(b: int, res: int, gen: torch.Generator, device=None) -> torch.Tensor:
    """Dark tinted backgrounds with a soft gradient and faint stripes: [B, 3, H, W]."""
    tint = 0.05 + 0.20 * _rand(gen, device, b, 3, 1, 1)
    coords = torch.linspace(-1, 1, res, device=device)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    angle = _rand(gen, device, b, 1, 1) * 6.2832
    ramp = xx[None] * torch.cos(angle) + yy[None] * torch.sin(angle)  # [B, H, W]
    freq = 3.0 + 5.0 * _rand(gen, device, b, 1, 1)
    stripes = torch.sin(ramp * freq * 3.1416 + _rand(gen, device, b, 1, 1) * 6.2832)
    shade = 1.0 + 0.35 * ramp * _rand(gen, device, b, 1, 1) + 0.12 * stripes
    return (tint * shade[:, None]).clamp(0, 1)


def _centres(picture: torch.Tensor, gen: torch.Generator, res: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres (pixels) of the left/top object and the right/bottom object: [B, 2] each (x, y)."""
    b = picture.shape[0]
    along_a = 0.27 + (torch.rand(b, generator=gen) - 0.5) * 0.08
    along_b = 0.73 + (torch.rand(b, generator=gen) - 0.5) * 0.08
    across = 0.5 + (torch.rand(b, generator=gen) - 0.5) * 0.36
    across_a = across + (torch.rand(b, generator=gen) - 0.5) * 0.1
    across_b = across + (torch.rand(b, generator=gen) - 0.5) * 0.1
    vertical = picture[:, 0] == 1
    ca = torch.stack([torch.where(vertical, across_a, along_a), torch.where(vertical, along_a, across_a)], 1)
    cb = torch.stack([torch.where(vertical, across_b, along_b), torch.where(vertical, along_b, across_b)], 1)
    return ca * res, cb * res


def _object(obj: torch.Tensor, centre: torch.Tensor, gen: torch.Generator, res: int, ss: int):
    """Coverage [B, 1, H, W] and colour [B, 3] of one object per picture ([B, 3] shape, colour, size), on the
    device of `centre` (random draws from the CPU generator)."""
    b, device = obj.shape[0], centre.device
    side = res * ss
    px = (torch.arange(side, dtype=torch.float32, device=device) + 0.5) / ss
    yy, xx = torch.meshgrid(px, px, indexing="ij")
    base_r = torch.tensor([_RADIUS[s] for s in SIZES])[obj[:, 2]].to(device)
    radius = res * base_r * (0.92 + 0.16 * _rand(gen, device, b))
    u = (xx[None] - centre[:, 0, None, None]) / radius[:, None, None]
    v = (yy[None] - centre[:, 1, None, None]) / radius[:, None, None]
    mask = _masks(u, v)[obj[:, 0].to(device), torch.arange(b, device=device)]
    mask = torch.nn.functional.avg_pool2d(mask[:, None], ss)
    base = torch.tensor([COLOURS[c] for c in COLOUR_NAMES])[obj[:, 1]].to(device)
    colour = (base * (0.85 + 0.15 * _rand(gen, device, b, 1))).clamp(0, 1)
    return mask, colour


def render(labels: torch.Tensor, generator: torch.Generator, resolution: int = RESOLUTION,
           supersample: int = 2, device=None) -> torch.Tensor:
    """Pictures for [B, 7] prompt labels: [B, 3, H, W] float in 0..1, drawn on `device` (default CPU; the random
    draws come from the CPU generator either way, so a GPU draws the same pictures, up to rounding)."""
    picture = canonical(labels)
    img = _background(picture.shape[0], resolution, generator, device)
    ca, cb = (c.to(device) for c in _centres(picture, generator, resolution))
    for obj, centre in ((picture[:, 1:4], ca), (picture[:, 4:7], cb)):
        mask, colour = _object(obj, centre, generator, resolution, supersample)
        img = img * (1 - mask) + colour[:, :, None, None] * mask
    return img.clamp(0, 1)


@dataclass
class Batch:
    images: torch.Tensor  # [B, 3, H, W], 0..1
    labels: torch.Tensor  # [B, 7] prompt labels
    prompts: list[str]


def sample_batch(batch: int, generator: torch.Generator, resolution: int = RESOLUTION, device=None) -> Batch:
    labels = random_labels(batch, generator)
    images = render(labels, generator, resolution, device=device)
    return Batch(images, labels, [Scene.from_label(lab).prompt for lab in labels.tolist()])


def dataset(n: int, seed: int = 0, resolution: int = RESOLUTION) -> Batch:
    return sample_batch(n, torch.Generator().manual_seed(seed), resolution)
