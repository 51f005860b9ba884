"""How much to collect: the weak model's data-scaling curve on the toy world.

    python -m bench.scaling                     # 120 prompts × 1, 4, 16 seeds: 120 / 480 / 1920 trajectories

For each dataset size it collects (resumable, in --work; one dataset per size), trains the demo's weak model with the
same recipe (--train-steps, default the demo's 2000), and measures on held-out noise seeds (from --seed, never
collected): the held-out relative error of the predicted guidance, and the accuracy of CoRe² all-fast and of CoRe²
16 steps with 4 slow, both at 20 passes, beside CFG at 20 and at 10 steps (the same samples for every row). Writes
`bench/results/scaling.json` and `scaling.md`.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from .run import RESULTS, ROOT, quality_methods

log = logging.getLogger("bench.scaling")


ROLES = ("cfg", "cfg-half", "all-fast", "mixed")


def methods(cfg: float, w2s: float) -> list:
    """The benchmark's rows of budget 20 (bench/run.py quality_methods) that the curve needs."""
    return [m for _, m in quality_methods([20], cfg, w2s, zigzag=False) if m.role in ROLES]


def measure_size(args, seeds: int) -> dict:
    """Collect, train and evaluate at 120 prompts × `seeds` seeds: one row of the curve."""
    from demo import pipeline

    dcfg = pipeline.DemoConfig(dataset_name=f"toy_scaling_{seeds}", model_name=f"toy_scaling_{seeds}_small",
                               seeds_per_prompt=seeds, train_steps=args.train_steps, memory=args.memory)
    t0 = time.perf_counter()
    data = pipeline.collect(args.work, dcfg)
    weak, training = pipeline.train(args.work, dcfg, data["folder"])
    prep = time.perf_counter() - t0
    model = pipeline.world_model("shapes")
    rows = pipeline.evaluate(model, methods(dcfg.cfg, dcfg.w2s_scale), weak, args.samples, args.seed, batch=60)
    return {"trajectories": data["items"], "seeds_per_prompt": seeds, "prompts": data["prompts"],
            "collect_seconds": data["seconds_total"], "train_seconds": training.get("seconds"),
            "train_steps": training.get("steps"), "val_rel_err": training.get("val_rel_err"),
            "prep_seconds": round(prep, 1), "rows": rows}


def table(res: dict) -> str:
    lines = [f"Toy world 'shapes', weak model 'small' trained {res['train_steps']} steps on each dataset; "
             f"{res['samples']} held-out (prompt, seed) samples per row, euler/normal, cfg 5, w2s 1.5 "
             "(± one standard error). CFG rows are the same at every size (the weak model is not used).", "",
             "| trajectories | held-out rel. error | all-fast, 20 passes | 16 steps 4 slow, 20 passes "
             "| CFG 10 steps, 20 passes | CFG 20 steps, 40 passes | collect + train s |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in res["sizes"]:
        acc = {r["role"]: f"{r['accuracy']['mean']:.3f} ± {r['accuracy_se']:.3f}" for r in s["rows"]}
        err = "–" if s["val_rel_err"] is None else f"{s['val_rel_err']:.3f}"
        lines.append(f"| {s['trajectories']} | {err} | {acc['all-fast']} | {acc['mixed']} | {acc['cfg-half']} "
                     f"| {acc['cfg']} | {s['prep_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=[1, 4, 16],
                    help="seeds per prompt of each dataset (120 prompts each)")
    ap.add_argument("--train-steps", dest="train_steps", type=int, default=2000)
    ap.add_argument("--memory", action=argparse.BooleanOptionalAction, default=False,
                    help="weak models with guidance memory (the curve in bench/results/scaling.json is without)")
    ap.add_argument("--samples", type=int, default=240)
    ap.add_argument("--seed", type=int, default=700_000, help="first evaluation seed (never collected)")
    ap.add_argument("--work", type=Path, default=ROOT / "bench_out" / "scaling")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from demo import pipeline

    from .run import environment

    inst, _ = pipeline.setup(args.work, args.threads)
    from comfyui_core2.core2.files import atomic_write_json

    res = {"format": "core2-bench-scaling", "version": 1, "environment": environment(inst), "samples": args.samples,
           "train_steps": args.train_steps, "seed": args.seed, "sizes": []}
    for seeds in sorted(args.seeds):
        res["sizes"].append(measure_size(args, seeds))
        args.results.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.results / "scaling.json", res)  # after each size: a stop keeps what was measured
        (args.results / "scaling.md").write_text(table(res), encoding="utf-8")
    print("\n" + table(res))
    log.info("scaling: %s", json.dumps([(s["trajectories"], s["val_rel_err"]) for s in res["sizes"]]))


if __name__ == "__main__":
    main()
