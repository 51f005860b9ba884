"""How well pictures follow their prompts in the scenes world: generate, read back, compare with the prompt.

    python -m toy.scenes.evaluate --cfg 1 2 3 5 7 9 --steps 20 --n 256     # a cfg sweep
    python -m toy.scenes.evaluate --cfg 5 --steps 10 20 40 --n 256          # a step sweep

Run from the repository root (it activates ComfyUI through tools/comfy_env.py). Noise seeds start at --seed
(default 800000: never used for collecting); every number comes with its standard error.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import time

import torch

from .. import cli
from ..judge import mean_se
from . import data, reader

log = logging.getLogger("toy.scenes.evaluate")


def prompt_set(n: int, seed: int = 0) -> tuple[list[str], torch.Tensor]:
    """n prompts drawn uniformly (seeded) from the 9216 scenes and their [n, 7] prompt labels."""
    labels = data.random_labels(n, torch.Generator().manual_seed(seed))
    return [data.Scene.from_label(lab).prompt for lab in labels.tolist()], labels


def prompt_list(n: int, seed: int = 0) -> list[str]:
    """n distinct prompts (a seeded order of the 9216 scenes, repeating only after all of them): the list to collect
    from, where a repeated prompt would only sample the same trajectories twice."""
    order = torch.randperm(data.N_SCENES, generator=torch.Generator().manual_seed(seed))
    return [data.Scene.from_label(data.label_of_index(int(order[i % data.N_SCENES]))).prompt for i in range(n)]


def score(images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Reader accuracy of IMAGE [B, 64, 64, 3] (or [B, 3, 64, 64]) pictures against [B, 7] prompt labels: per field,
    "mean" over the seven fields, "all" (compositional: every field right), "n"."""
    return reader.accuracy(reader.load().predict(images), labels)


@torch.no_grad()
def features(images: torch.Tensor) -> torch.Tensor:
    """The reader's 256-d features, for Fréchet distances."""
    return reader.load().features(images).double()


def real_pictures(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """Rendered pictures [B, 3, 64, 64] of the scenes the labels name."""
    return data.render(labels, torch.Generator().manual_seed(seed))


def standard_error(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))


def evaluate(model, cfg: float, steps: int, n: int, seed: int, batch: int = 64, path=None, **sampling) -> dict:
    from .. import world

    prompts, labels = prompt_set(n, seed=1)
    t0 = time.perf_counter()
    images = torch.cat([world.generate(prompts[i:i + batch], cfg=cfg, steps=steps, seed=seed + i, model=model,
                                       path=path, **sampling) for i in range(0, n, batch)])
    predicted = reader.load().predict(images)
    acc = reader.accuracy(predicted, labels)
    per_picture = (predicted == data.canonical(labels)).float().mean(1)
    acc["mean_se"] = mean_se(per_picture)  # over pictures: the seven fields of one picture are not independent
    acc["all_se"] = standard_error(acc["all"], n)
    acc["seconds"] = time.perf_counter() - t0
    return acc


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cfg", type=float, nargs="+", default=[1.0, 5.0])
    ap.add_argument("--steps", type=int, nargs="+", default=[20])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--sampler", default="euler")
    ap.add_argument("--scheduler", default="simple")
    ap.add_argument("--seed", type=int, default=800_000)
    ap.add_argument("--weights", default=None, help="scenes model file (default: the shipped one)")
    args = cli.parse_and_set_up(ap, argv)
    from tools import comfy_env

    comfy_env.activate()
    from .. import world

    path = args.weights or world.spec("scenes").weights
    model = world.load_toy_model(path)
    for steps in args.steps:
        for cfg in args.cfg:
            acc = evaluate(model, cfg, steps, args.n, args.seed, path=path, sampler_name=args.sampler,
                           scheduler=args.scheduler)
            print(json.dumps({"cfg": cfg, "steps": steps, **{k: round(v, 4) if isinstance(v, float) else v
                                                             for k, v in acc.items()}}), flush=True)


if __name__ == "__main__":
    main()
