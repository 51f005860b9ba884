"""CoRe² in one command, on the toy text-to-image world (CPU, a few minutes):

1. Collect: sample every toy prompt at a few seeds with CFG and record the trajectories (CoRe² Collect Batch code);
2. Reflect: train a tiny weak model on them (the CoRe² Reflect code);
3. Refine: render a grid with cfg 1, CFG and CoRe² (the CoRe² KSampler node), score every method with the toy
   attribute classifier on held-out seeds, and write a report.

    python -m demo.run                        # into demo_out/
    python -m demo.run --out /tmp/d --quick   # a small run

A rerun reuses the collected dataset and the trained weak model (both are resumable).
"""
from __future__ import annotations

import argparse
import logging
import platform
import time
from pathlib import Path

from . import pipeline
from .pipeline import DemoConfig

log = logging.getLogger("core2.demo")


def quick_config() -> DemoConfig:
    return DemoConfig(prompts=24, seeds_per_prompt=2, steps=8, train_steps=150, train_batch=16, eval_samples=12,
                      grid_prompts=DemoConfig.grid_prompts[:2], dataset_name="toy_demo_quick",
                      model_name="toy_demo_quick_tiny")


def make_grid(out_dir: Path, cfg: DemoConfig, model, weak) -> tuple[Path, float]:
    from .grid import render_grid

    methods = pipeline.demo_methods(cfg)
    rows, t0 = [], time.perf_counter()
    for r, prompt in enumerate(cfg.grid_prompts):
        seed = cfg.grid_seed + r
        rows.append([pipeline.sample(model, m, weak, [prompt], seed)[0][0] for m in methods])
    seconds = time.perf_counter() - t0
    cols = []
    for m in methods:
        _, passes, _ = pipeline.sample(model, m, weak, [cfg.grid_prompts[0]], cfg.grid_seed)
        extra = (f"cfg {m.cfg:g}" if m.cfg != 1 else "no guidance") if m.kind == "cfg" else f"{m.slow_steps} slow, w2s {m.w2s_scale:g}"
        cols.append(f"{m.name}\n{extra}\n{passes:g} passes")
    labels = [f"{p}  (seed {cfg.grid_seed + r})" for r, p in enumerate(cfg.grid_prompts)]
    title = (f"toy world, {cfg.steps} steps {cfg.sampler_name}/{cfg.scheduler}; weak model '{cfg.model_name}'; "
             "seeds never collected")
    path = render_grid(rows, labels, cols, out_dir / "core2_demo_grid.png", scale=cfg.grid_scale, title=title)
    return path, seconds


def markdown(report: dict) -> str:
    d, t = report["dataset"], report["training"]
    lines = ["# CoRe² toy demo", "",
             f"ComfyUI: {report['environment']['comfyui']}; torch {report['environment']['torch']}; "
             f"device cpu, {report['environment']['threads']} thread(s).", "",
             "## Collect", "",
             f"{d['items']} trajectories ({d['prompts']} prompts, {d['samples']} step samples, "
             f"{d['bytes'] / 2**20:.1f} MiB), {report['config']['steps']} steps euler/normal at cfg "
             f"{report['config']['cfg']:g}; collected in {d['seconds_total']:.1f} s "
             f"({d['collected_now']} new in this run, {d['reused']} reused).", "",
             "## Reflect", "",
             f"Weak model `{Path(t['path']).name}` ({t['size']}, {t['parameters']} parameters): {t['steps']} steps "
             f"(best {t['best_step']}) in {t['seconds']:.1f} s. Validation relative error "
             f"**{t['val_rel_err']:.3f}**" + (f" (in x0 space {t['val_rel_err_x0']:.3f})" if t.get("val_rel_err_x0") is not None else "")
             + f" on {t['validation_on']} (1.0 = no better than cfg 1).", "",
             "## Refine", "",
             f"{report['eval']['samples']} held-out (prompt, seed) samples per method, seeds from "
             f"{report['eval']['seed']} (never collected). Accuracy = the toy attribute classifier agrees with the "
             "prompt (mean of shape, colour, position).", "",
             "| method | slow steps | w2s | model passes / image | accuracy (mean) | shape | colour | position | all three | time s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for m in report["methods"]:
        a = m["accuracy"]
        slow = "-" if m["kind"] == "cfg" else m["slow_steps"]
        w2s = "-" if m["kind"] == "cfg" else f"{m['w2s_scale']:g}"
        lines.append(f"| {m['name']} | {slow} | {w2s} | {m['passes_per_image']:g} | {a['mean']:.3f} | {a['shape']:.3f} | "
                     f"{a['colour']:.3f} | {a['position']:.3f} | {a['all']:.3f} | {m['seconds']:.1f} |")
    lines += ["", f"Grid: `{Path(report['grid']['path']).name}` (rows: prompts at fixed unseen seeds; columns: the "
              "methods above).", "", f"Total wall time of this run: {report['wall_seconds']:.1f} s.", ""]
    return "\n".join(lines)


def run(out_dir: Path, cfg: DemoConfig, threads: int = 1) -> dict:
    t_start = time.perf_counter()
    out_dir = Path(out_dir).resolve()
    inst, _ = pipeline.setup(out_dir, threads)
    import torch

    from comfyui_core2.core2.files import atomic_write_bytes, atomic_write_json
    from comfyui_core2.toy import world

    log.info("CoRe² demo → %s (ComfyUI: %s)", out_dir, inst.describe())
    log.info("1/3 Collect: %d prompts × %d seeds, %d steps, cfg %g", cfg.prompts, cfg.seeds_per_prompt, cfg.steps, cfg.cfg)
    dataset = pipeline.collect(out_dir, cfg)
    log.info("   %d trajectories (%d new) in %s", dataset["items"], dataset["collected_now"], dataset["folder"])
    log.info("2/3 Reflect: %s weak model, %d steps", cfg.size, cfg.train_steps)
    weak, training = pipeline.train(out_dir, cfg, dataset["folder"])
    log.info("   validation relative error %.3f (%s)", training["val_rel_err"] or float("nan"),
             "trained now" if training["trained_now"] else "reused")
    log.info("3/3 Refine: grid and evaluation")
    model = world.load_toy_model()
    grid_path, grid_seconds = make_grid(out_dir, cfg, model, weak)
    methods = pipeline.evaluate(model, pipeline.demo_methods(cfg), weak, cfg.eval_samples, cfg.eval_seed)
    report = {"format": "core2-toy-demo", "version": 1, "config": pipeline.config_dict(cfg),
              "environment": {"comfyui": inst.describe(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                              "python": platform.python_version(), "machine": platform.machine()},
              "dataset": dataset, "training": training,
              "eval": {"samples": cfg.eval_samples, "seed": cfg.eval_seed, "classifier": "toy/weights/toy_classifier"},
              "methods": methods,
              "grid": {"path": str(grid_path), "rows": list(cfg.grid_prompts),
                       "columns": [m.name for m in pipeline.demo_methods(cfg)], "seconds": round(grid_seconds, 2)}}
    report["wall_seconds"] = round(time.perf_counter() - t_start, 2)
    atomic_write_json(out_dir / "core2_demo_report.json", report)
    atomic_write_bytes(out_dir / "core2_demo_report.md", markdown(report).encode("utf-8"))
    return report


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=pipeline.ROOT / "demo_out", help="output folder (default demo_out/)")
    ap.add_argument("--quick", action="store_true", help="a small run (about a minute)")
    ap.add_argument("--seeds-per-prompt", type=int, default=None)
    ap.add_argument("--train-steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for the toy model)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = quick_config() if args.quick else DemoConfig()
    if args.seeds_per_prompt:
        cfg.seeds_per_prompt = args.seeds_per_prompt
    if args.train_steps:
        cfg.train_steps = args.train_steps
    report = run(args.out, cfg, args.threads)
    out = Path(args.out).resolve()
    print("\n" + markdown(report))
    print(f"grid:   {report['grid']['path']}")
    print(f"report: {out / 'core2_demo_report.md'} and {out / 'core2_demo_report.json'}")


if __name__ == "__main__":
    main()
