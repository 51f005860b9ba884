"""Does a steered second collection round help? The demo's budget spent two ways, on the toy world.

    python -m bench.steered            # about 40 minutes on 1 CPU thread; writes bench/results/steered.json + .md

"cfg only" (the demo's recipe): 120 prompts × 4 seeds collected with CFG (480 trajectories), a small weak model
trained 5000 steps. "steered": 120 prompts × 2 seeds with CFG, a weak model trained 2500 steps on them; then 120 × 2
more seeds collected *steered* by that model (every step a CoRe² fast step, both passes recorded: CoRe² Collect
Batch's steer_with input) into the same dataset, and the model resumed on all 480 to 5000 steps. Same trajectories,
same training steps, same collection cost; only where the second half of the data comes from differs. Both models
are measured on the same held-out (prompt, seed) samples (seeds never collected): CoRe² all-fast and mixed rows at
20, 10 and 4 passes, beside CFG.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

from .run import RESULTS, ROOT, quality_methods

log = logging.getLogger("bench.steered")

ROLES = ("all-fast", "mixed", "mixed spread")


def methods(cfg: float, w2s: float, budgets: list[int]) -> tuple[list, list]:
    """(CFG rows, CoRe² rows) of the benchmark (bench/run.py quality_methods) that this comparison needs."""
    rows = [m for _, m in quality_methods(budgets, cfg, w2s, zigzag=False)]
    top = max(budgets)
    cfg_rows = [m for m in rows if m.role in ("cfg", "cfg-half") and m.steps in (top, top // 2)]
    return cfg_rows[:2], [m for m in rows if m.role in ROLES]


def _resume_copy(src: Path, dst: Path) -> None:
    """Start dst from round one's finished model (and its optimizer state), so training resumes from there."""
    from comfyui_core2.core2 import train as trainer

    if dst.is_file() or trainer.partial_path(dst).is_file():
        return  # resuming an interrupted bench run
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    if trainer.optimizer_path(src).is_file():
        shutil.copyfile(trainer.optimizer_path(src), trainer.optimizer_path(dst))


def train_resumed(work: Path, dcfg, dataset_folder: str, start: Path):
    """Round two's model: round one's weights resumed on the grown dataset up to dcfg.train_steps."""
    from comfyui_core2.core2 import train as trainer
    from comfyui_core2.core2.weights_io import load_weak_model, read_metadata
    from demo import pipeline

    out = pipeline.weak_model_path(work, dcfg)
    _resume_copy(start, out)
    tr = read_metadata(out).get("training", {}) if out.is_file() else {}
    t0 = time.perf_counter()
    if not (tr.get("complete") and int(tr.get("step", 0)) >= dcfg.train_steps):
        settings = trainer.TrainSettings(steps=dcfg.train_steps, batch_size=dcfg.train_batch, lr=dcfg.train_lr,
                                         size=dcfg.size, seed=0, val_fraction=dcfg.val_fraction, memory=dcfg.memory,
                                         resume=True, eval_every=max(50, dcfg.train_steps // 6),
                                         checkpoint_every=max(50, dcfg.train_steps // 6))
        log.info("%s", trainer.train(dataset_folder, out, settings).summary)
    meta = read_metadata(out)
    return load_weak_model(out), {"path": str(out), "steps": meta["training"].get("step"),
                                  "seconds_this_run": round(time.perf_counter() - t0, 1),
                                  "val_rel_err": meta.get("val_metrics", {}).get("rel_err")}


def prepare(args) -> dict:
    """Collect and train both arms (resumable); returns {arm: (weak model, info)}."""
    from demo import pipeline

    half = args.seeds // 2
    for sub in ("cfg", "r1", "r2"):
        (args.work / sub).mkdir(parents=True, exist_ok=True)
    base = dict(train_steps=args.train_steps, memory=True)
    control = pipeline.DemoConfig(dataset_name="toy_steer_cfg", model_name="toy_steer_cfg_small",
                                  seeds_per_prompt=args.seeds, **base)
    data = pipeline.collect(args.work / "cfg", control)
    arms = {"cfg only": (*pipeline.train(args.work / "cfg", control, data["folder"]), data)}
    r1 = pipeline.DemoConfig(dataset_name="toy_steer", model_name="toy_steer_r1_small", seeds_per_prompt=half,
                             **{**base, "train_steps": args.train_steps // 2})
    data1 = pipeline.collect(args.work / "r1", r1)
    weak1, info1 = pipeline.train(args.work / "r1", r1, data1["folder"])
    r2 = pipeline.DemoConfig(dataset_name="toy_steer", model_name="toy_steer_r2_small", seeds_per_prompt=half,
                             collect_seed=r1.collect_seed + 10_000, **base)
    data2 = pipeline.collect(args.work / "r2", r2, steer_with=weak1)
    weak2, info2 = train_resumed(args.work / "r2", r2, data2["folder"], Path(info1["path"]))
    arms["steered"] = (weak2, {"round1": info1, **info2}, data2)
    return arms


def table(res: dict) -> str:
    lines = [f"Toy world 'shapes', {res['samples']} held-out (prompt, seed) samples per row, euler/normal, cfg 5, "
             "w2s 1.5 (± one standard error; the difference's SE in brackets). Both weak models: small, guidance "
             f"memory, {res['train_steps']} training steps, {res['trajectories']} trajectories.", "",
             "| row | passes | cfg only | steered | difference |", "| --- | ---: | ---: | ---: | ---: |"]
    for r in res["cfg_rows"]:
        lines.append(f"| {r['name']} | {r['passes_per_image']:g} | {r['accuracy']['mean']:.3f} ± "
                     f"{r['accuracy_se']:.3f} | | |")
    for a, b in zip(res["arms"]["cfg only"]["rows"], res["arms"]["steered"]["rows"]):
        d = b["accuracy"]["mean"] - a["accuracy"]["mean"]
        se = (a["accuracy_se"] ** 2 + b["accuracy_se"] ** 2) ** 0.5
        lines.append(f"| {a['name']} | {a['passes_per_image']:g} | {a['accuracy']['mean']:.3f} ± {a['accuracy_se']:.3f} "
                     f"| {b['accuracy']['mean']:.3f} ± {b['accuracy_se']:.3f} | {d:+.3f} ({se:.3f}) |")
    lines.append("")
    lines.append("Held-out relative error: " + ", ".join(
        f"{k} {v['training'].get('val_rel_err') or float('nan'):.3f}" for k, v in res["arms"].items()))
    return "\n".join(lines) + "\n"


def _rows(model, ms, weak, args) -> list[dict]:
    from demo import pipeline

    return pipeline.evaluate(model, ms, weak, args.samples, args.seed, batch=60)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=4, help="seeds per prompt in all (half of them steered)")
    ap.add_argument("--train-steps", dest="train_steps", type=int, default=5000)
    ap.add_argument("--budgets", type=lambda v: [int(x) for x in v.split(",")], default=[4, 10, 20])
    ap.add_argument("--samples", type=int, default=240)
    ap.add_argument("--seed", type=int, default=800_000, help="first evaluation seed (never collected)")
    ap.add_argument("--work", type=Path, default=ROOT / "bench_out" / "steered")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from demo import pipeline

    from .run import environment

    inst, _ = pipeline.setup(args.work, args.threads)
    from comfyui_core2.core2.files import atomic_write_json

    arms = prepare(args)
    cfg_ms, core_ms = methods(5.0, 1.5, args.budgets)
    model = pipeline.world_model("shapes")
    res = {"format": "core2-bench-steered", "version": 1, "environment": environment(inst), "samples": args.samples,
           "seed": args.seed, "train_steps": args.train_steps, "trajectories": arms["cfg only"][2]["items"],
           "cfg_rows": _rows(model, cfg_ms, None, args), "arms": {}}
    for name, (weak, info, data) in arms.items():
        res["arms"][name] = {"training": info, "data": data, "rows": _rows(model, core_ms, weak, args)}
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.results / "steered.json", res)
    (args.results / "steered.md").write_text(table(res), encoding="utf-8")
    print("\n" + table(res))


if __name__ == "__main__":
    main()
