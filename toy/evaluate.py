"""How well pictures follow their prompts in the toy world: generate, classify, compare with the prompt.

    python -m toy.evaluate --cfg 1 5 --n 64          # attribute accuracy at cfg 1 and cfg 5

Run from the repository root (it activates ComfyUI through tools/comfy_env.py).
"""
from __future__ import annotations

import argparse
import json
import logging
import time

import torch

from . import classifier, cli, data

log = logging.getLogger("toy.evaluate")


def prompt_set(n: int, seed: int = 0) -> tuple[list[str], torch.Tensor]:
    """n prompts covering the 120 attribute combinations evenly (seeded order) and their [n, 3] labels."""
    combos = data.all_combinations()
    order = torch.randperm(len(combos), generator=torch.Generator().manual_seed(seed)).tolist()
    picked = [combos[order[i % len(combos)]] for i in range(n)]
    return [a.prompt for a in picked], torch.tensor([a.label for a in picked])


def score(images: torch.Tensor, labels: torch.Tensor) -> classifier.Accuracy:
    """Accuracy of IMAGE [B, H, W, 3] pictures against [B, 3] labels, read by the shipped classifier."""
    return classifier.accuracy(classifier.load().predict(images), labels)


def evaluate(cfg: float, n: int = 64, seed: int = 0, model=None, batch: int = 64, **sampling) -> classifier.Accuracy:
    """Generate n pictures at this cfg (toy world defaults otherwise) and score them."""
    from . import world

    prompts, labels = prompt_set(n, seed)
    images = [world.generate(prompts[i:i + batch], cfg=cfg, seed=seed + i, model=model, **sampling)
              for i in range(0, n, batch)]
    return score(torch.cat(images), labels)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cfg", type=float, nargs="+", default=[1.0, 5.0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--sampler", default="euler")
    ap.add_argument("--scheduler", default="normal")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", default=None, help="toy model file (default: the shipped one)")
    args = cli.parse_and_set_up(ap, argv)
    from tools import comfy_env

    comfy_env.activate()
    from . import world

    model = world.load_toy_model(args.weights)
    for cfg in args.cfg:
        t0 = time.time()
        acc = evaluate(cfg, n=args.n, seed=args.seed, model=model, steps=args.steps, sampler_name=args.sampler,
                       scheduler=args.scheduler, path=args.weights)
        print(json.dumps({"cfg": cfg, "steps": args.steps, "sampler": args.sampler, "scheduler": args.scheduler,
                          **{k: round(v, 4) if isinstance(v, float) else v for k, v in acc.as_dict().items()},
                          "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
