"""Toy wall clock: what a CoRe² step costs against a CFG step on the toy world, sampled end to end as the benchmark
samples (ComfyUI's sampler, the CoRe² KSampler node, a trained weak model), not only counted in passes.

    python -m bench.toy_speed --weak bench_out/demo_budget/models/core2/<name>.safetensors --reps 5

Runs alternate between the methods so that machine load hits them alike; the figures are medians. A fast step's cost
is read off the all-fast run (every step fast) against CFG at the same steps: seconds per step of each. The weak model's
weights do not change its cost, but use the trained file so that the sampler takes the path a user's run takes.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("bench.toy_speed")


def methods(steps: int, cfg: float, slow: int):
    from demo.pipeline import Method

    return [Method("CFG", "cfg", cfg, steps, role="cfg"),
            Method("CoRe² all-fast", "core2", cfg, steps, 0, 1.0, role="all-fast"),
            Method(f"CoRe² {slow} slow", "core2", cfg, steps, slow, 1.5, role="mixed", placement="auto"),
            Method("cfg 1", "cfg", 1.0, steps, role="cond-only")]


def measure(weak, batch: int, steps: int, cfg: float, slow: int, reps: int, world_name: str) -> dict:
    """Median seconds per run of each method, alternating method order every repetition."""
    from demo import pipeline

    model = pipeline.world_model(world_name)
    prompts = pipeline.toy_prompts(batch, seed=3, world=world_name)
    ms = methods(steps, cfg, slow)
    times = {m.role: [] for m in ms}
    passes = {}
    for m in ms:  # warm-up
        pipeline.sample(model, m, weak, prompts, 0, world_name)
    for r in range(reps):
        for m in (ms if r % 2 == 0 else ms[::-1]):
            _, p, s = pipeline.sample(model, m, weak, prompts, 1000 + r, world_name)
            times[m.role].append(s)
            passes[m.role] = p
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"batch": batch, "steps": steps, "slow_steps": slow, "reps": reps,
            "seconds": {k: round(v, 4) for k, v in med.items()}, "passes_per_image": passes,
            "times": {k: [round(t, 4) for t in v] for k, v in times.items()},
            "fast_step_over_cfg_step": round(med["all-fast"] / med["cfg"], 3),
            "cond_step_over_cfg_step": round(med["cond-only"] / med["cfg"], 3),
            "mixed_over_cfg": round(med["mixed"] / med["cfg"], 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weak", type=Path, required=True, help="a trained weak-model file for the toy world")
    ap.add_argument("--world", default="shapes")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--slow", type=int, default=4)
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    from demo import pipeline

    pipeline.setup(ROOT / "bench_out" / "toy_speed", threads=1)
    from comfyui_core2.core2.weights_io import load_weak_model

    weak = load_weak_model(args.weak)
    res = {"format": "core2-bench-toy-speed", "version": 1, "world": args.world, "weak": args.weak.name,
           "threads": 1, "runs": [measure(weak, b, args.steps, args.cfg, args.slow, args.reps, args.world)
                                  for b in args.batch]}
    for r in res["runs"]:
        log.info("batch %d, %d steps: CFG %.3f s, all-fast %.3f s (fast/CFG step %.3f), cfg 1 %.3f s (%.3f), "
                 "%d slow %.3f s (%.3f of CFG)", r["batch"], r["steps"], r["seconds"]["cfg"], r["seconds"]["all-fast"],
                 r["fast_step_over_cfg_step"], r["seconds"]["cond-only"], r["cond_step_over_cfg_step"], r["slow_steps"],
                 r["seconds"]["mixed"], r["mixed_over_cfg"])
    text = json.dumps(res, indent=1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
