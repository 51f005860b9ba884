"""The scenes world's reader: reads every attribute of a 64×64 scene back (axis of the relation, then shape, colour
and size of the left/top and the right/bottom object), the compositional score (all seven right), and features for a
Fréchet distance. Plain torch, no ComfyUI. Trained on procedural scenes with light blur and noise.

    python -m toy.scenes.reader --out toy/weights/scenes_reader.safetensors     # train (a few minutes on CPU)
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from .. import cli, judge_files
from . import data

log = logging.getLogger("toy.scenes.reader")
DEFAULT_PATH = Path(__file__).resolve().parent.parent / "weights" / "scenes_reader.safetensors"
_FORMAT = "core2-toy-scenes-reader"
FEATURES = 256


class SceneReader(torch.nn.Module):
    def __init__(self):
        super().__init__()
        c = [3, 32, 64, 96, 128]
        layers = []
        for a, b in zip(c[:-1], c[1:]):
            layers += [torch.nn.Conv2d(a, b, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
        self.conv = torch.nn.Sequential(*layers)  # 64 -> 4
        self.hidden = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(128 * 4 * 4, FEATURES), torch.nn.ReLU())
        self.heads = torch.nn.ModuleDict({f: torch.nn.Linear(FEATURES, n) for f, n in data.PICTURE_CLASSES.items()})

    @staticmethod
    def _nchw(images: torch.Tensor) -> torch.Tensor:
        return images.movedim(-1, 1) if images.shape[-1] == 3 and images.shape[1] != 3 else images

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 256] features of [B, 3, 64, 64] (or IMAGE [B, 64, 64, 3]) pictures in 0..1."""
        return self.hidden(self.conv(self._nchw(images).float() * 2.0 - 1.0))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.features(images)
        return {f: head(h) for f, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 7] picture labels (see data.PICTURE_FIELDS)."""
        logits = self(images)
        return torch.stack([logits[f].argmax(-1) for f in data.PICTURE_FIELDS], dim=1)


def accuracy(predicted: torch.Tensor, prompt_labels: torch.Tensor) -> dict:
    """Per-field accuracy, their mean and the compositional accuracy (all seven right) against prompt labels."""
    ok = (predicted == data.canonical(prompt_labels)).float()
    out = {f: float(ok[:, i].mean()) for i, f in enumerate(data.PICTURE_FIELDS)}
    out["mean"] = float(ok.mean())
    out["all"] = float(ok.all(dim=1).float().mean())
    out["n"] = len(ok)
    return out


def _augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blur, noise and a little colour shift, as generated pictures have."""
    b = images.shape[0]
    blur = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(images, (1, 1, 1, 1), mode="replicate"), 3, 1)
    mix = torch.rand(b, 1, 1, 1, generator=gen) * 0.7
    images = images * (1 - mix) + blur * mix
    images = images * (1 + (torch.rand(b, 3, 1, 1, generator=gen) - 0.5) * 0.1)
    images = images + torch.randn(images.shape, generator=gen) * 0.06 * torch.rand(b, 1, 1, 1, generator=gen)
    return images.clamp(0, 1)


def train(steps: int = 2500, batch: int = 64, seed: int = 0, lr: float = 2e-3) -> SceneReader:
    torch.manual_seed(seed)

    def batch_fn(gen):
        b = data.sample_batch(batch, gen)
        return _augment(b.images, gen), data.canonical(b.labels)

    return judge_files.fit(SceneReader(), batch_fn, data.PICTURE_FIELDS, steps, lr, seed,
                           lambda msg, *a: log.info("reader " + msg, *a), every=250)


def save(net: SceneReader, path: Path) -> None:
    judge_files.save(net, path, _FORMAT)


def load(path: Path | str = DEFAULT_PATH) -> SceneReader:
    return judge_files.load(SceneReader, path, _FORMAT, "scenes-world reader", "python -m toy.scenes.reader")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_PATH)
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--seed", type=int, default=0)
    args = cli.parse_and_set_up(ap, argv)
    t0 = time.time()
    net = train(steps=args.steps, seed=args.seed)
    test = data.dataset(2000, seed=12345)
    log.info("held-out accuracy on rendered scenes: %s", accuracy(net.predict(test.images), test.labels))
    save(net, args.out)
    log.info("saved %s in %.0fs", args.out, time.time() - t0)


if __name__ == "__main__":
    main()
