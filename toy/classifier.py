"""An attribute classifier for toy-world pictures: which shape, colour and position a 32×32 picture shows.

It is the toy world's quality measure: generate a picture for a prompt, classify it, compare with the prompt's
attributes. Plain torch, no ComfyUI. Trained on procedural pictures (toy/data.py) with light noise and blur, so
that it also reads slightly imperfect generated pictures.

    python -m toy.classifier --out toy/weights/toy_classifier.safetensors     # train (about a minute on CPU)
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import cli, data, judge_files

log = logging.getLogger("toy.classifier")
DEFAULT_PATH = Path(__file__).resolve().parent / "weights" / "toy_classifier.safetensors"
_FORMAT = "core2-toy-classifier"


class AttributeClassifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        c = [3, 24, 48, 64]
        layers = []
        for a, b in zip(c[:-1], c[1:]):
            layers += [torch.nn.Conv2d(a, b, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
        self.features = torch.nn.Sequential(*layers)  # 32 -> 4
        self.hidden = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64 * 4 * 4, 128), torch.nn.ReLU())
        self.heads = torch.nn.ModuleDict({a: torch.nn.Linear(128, n) for a, n in data.NUM_CLASSES.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images [B, 3, 32, 32] in 0..1 -> logits per attribute."""
        h = self.hidden(self.features(images * 2.0 - 1.0))
        return {a: head(h) for a, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3] long predictions (shape, colour, position). Accepts [B,3,H,W] or ComfyUI IMAGE [B,H,W,3]."""
        if images.shape[-1] == 3 and images.shape[1] != 3:
            images = images.movedim(-1, 1)
        logits = self(images.float())
        return torch.stack([logits[a].argmax(-1) for a in data.ATTRIBUTES], dim=1)


@dataclass
class Accuracy:
    shape: float
    colour: float
    position: float
    all_three: float  # share of pictures with every attribute right
    n: int

    @property
    def mean(self) -> float:
        return (self.shape + self.colour + self.position) / 3

    def as_dict(self) -> dict:
        return {"shape": self.shape, "colour": self.colour, "position": self.position, "mean": self.mean,
                "all_three": self.all_three, "n": self.n}


def accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> Accuracy:
    ok = (predicted == labels).float()
    return Accuracy(*(float(ok[:, i].mean()) for i in range(3)), float(ok.all(dim=1).float().mean()), len(labels))


def _augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Light blur and noise, as generated pictures have."""
    b = images.shape[0]
    blur = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(images, (1, 1, 1, 1), mode="replicate"), 3, 1)
    mix = torch.rand(b, 1, 1, 1, generator=gen) * 0.6
    images = images * (1 - mix) + blur * mix
    images = images + torch.randn(images.shape, generator=gen) * 0.06 * torch.rand(b, 1, 1, 1, generator=gen)
    return images.clamp(0, 1)


def train(steps: int = 800, batch: int = 64, seed: int = 0, lr: float = 2e-3) -> AttributeClassifier:
    torch.manual_seed(seed)

    def batch_fn(gen):
        b = data.sample_batch(batch, gen)
        return _augment(b.images, gen), b.labels

    return judge_files.fit(AttributeClassifier(), batch_fn, data.ATTRIBUTES, steps, lr, seed,
                           lambda msg, *a: log.info("classifier " + msg, *a), every=200)


def save(net: AttributeClassifier, path: Path) -> None:
    judge_files.save(net, path, _FORMAT)


def load(path: Path | str = DEFAULT_PATH) -> AttributeClassifier:
    return judge_files.load(AttributeClassifier, path, _FORMAT, "toy-world attribute classifier",
                            f"python -m toy.classifier --out {path}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_PATH)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--seed", type=int, default=0)
    args = cli.parse_and_set_up(ap, argv)
    t0 = time.time()
    net = train(steps=args.steps, seed=args.seed)
    test = data.dataset(1000, seed=12345)
    log.info("held-out accuracy on procedural pictures: %s", accuracy(net.predict(test.images), test.labels).as_dict())
    save(net, args.out)
    log.info("saved %s in %.0fs", args.out, time.time() - t0)


if __name__ == "__main__":
    main()
