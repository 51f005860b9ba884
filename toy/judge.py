"""How each toy world is judged, behind one interface: held-out prompt sets, reading pictures back, features for a
Fréchet distance and real pictures to compare with. Plain torch, no ComfyUI.

    j = judge("scenes")
    prompts, labels = j.prompt_set(480, seed=1)
    ok = j.correct(images, labels)     # [n, fields] bool: which attributes each picture got right
    acc = j.accuracy(ok)               # {field: accuracy, ..., "mean", "all" (every field right), "n"}
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Judge:
    world: str
    fields: tuple  # the attributes read back, in table order
    prompt_set: Callable[[int, int], tuple]  # (n, seed) -> (prompts, labels): an evaluation sample
    features: Callable[[torch.Tensor], torch.Tensor]  # pictures -> [B, D] float64
    real_pictures: Callable[[torch.Tensor, int], torch.Tensor]  # (labels, seed) -> [B, 3, H, W]
    reader: str  # what reads the pictures, for reports
    prompt_list: Callable[[int, int], list]  # (n, seed) -> prompts to collect from, distinct while the world has them
    correct: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (pictures, labels) -> [B, fields] bool

    def accuracy(self, ok: torch.Tensor) -> dict:
        """From correct()'s table: per field, "mean" over the fields, "all" (every field right), "n"."""
        ok = ok.float()
        out = {f: float(ok[:, i].mean()) for i, f in enumerate(self.fields)}
        out.update(mean=float(ok.mean()), all=float(ok.all(dim=1).float().mean()), n=len(ok))
        return out

    def score(self, images: torch.Tensor, labels: torch.Tensor) -> dict:
        return self.accuracy(self.correct(images, labels))


def mean_se(values: torch.Tensor) -> float:
    """The standard error of the mean of per-picture values (sample standard deviation / √n)."""
    n = values.numel()
    return float(values.double().std() / n ** 0.5) if n > 1 else 0.0


def _shapes() -> Judge:
    from . import classifier, data, evaluate

    @torch.no_grad()
    def features(images):
        net = classifier.load()
        if images.shape[-1] == 3 and images.shape[1] != 3:
            images = images.movedim(-1, 1)
        return net.hidden(net.features(images.float() * 2.0 - 1.0)).double()

    return Judge("shapes", data.ATTRIBUTES, evaluate.prompt_set, features,
                 lambda labels, seed: data.render(labels, torch.Generator().manual_seed(seed)),
                 "toy attribute classifier (128-d features)", lambda n, seed: evaluate.prompt_set(n, seed)[0],
                 lambda images, labels: classifier.load().predict(images) == labels)


def _scenes() -> Judge:
    from .scenes import data, evaluate, reader

    return Judge("scenes", data.PICTURE_FIELDS, evaluate.prompt_set, evaluate.features,
                 evaluate.real_pictures, "scenes reader (256-d features)", evaluate.prompt_list,
                 lambda images, labels: reader.load().predict(images) == data.canonical(labels))


def judge(world: str) -> Judge:
    makers = {"shapes": _shapes, "scenes": _scenes}
    if world not in makers:
        raise ValueError(f"no toy world named {world!r}; choose one of {', '.join(makers)}")
    return makers[world]()
