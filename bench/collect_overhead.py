"""Overhead of CoRe² Collect recording against plain sampling (same model, noise, sampler, steps).

Runs plain and recorded sampling alternately and prints the median wall time of each and the overhead. The recorded
time includes committing each run to disk (end of run), so it is the time a user waits.

    python bench/collect_overhead.py                     # notcomfy (scripts/setup_env.sh venv) or $COMFYUI_DIR
    python bench/collect_overhead.py --reps 7 --threads 1 --store-x
    CORE2_TEST_DEVICE=cuda python bench/collect_overhead.py --device cuda

Cases: tiny SD1.5 at a 32x32 latent, 20 steps (the fixed cost of recording dominates: the model is tiny) and a
larger one (tiny SD1.5, batch 4 at 48x48, or --case), all euler/normal at cfg 6.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]  # run as a script: the repository root holds tools/ and testkit/

CASES = {  # name: (family, batch, latent h=w, steps)
    "sd15-32": ("sd15", 1, 32, 20),
    "sd15-b4-48": ("sd15", 4, 48, 20),
    "sdxl-64": ("sdxl", 1, 64, 20),
}


def measure(name: str, reps: int, dev, store_x: bool) -> dict:
    """Plain and recorded sampling of one case, alternately; prints its table row and returns the figures as
    printed (same rounding), for bench/run.py."""
    import comfy.model_patcher
    import comfy.sample
    import torch

    from comfyui_core2.nodes import collect
    from testkit import tiny_models

    fam, batch, hw, steps = CASES[name]
    tm = tiny_models.BUILDERS[fam]()
    model = tm.patcher
    if dev.type != "cpu":
        model = comfy.model_patcher.ModelPatcher(model.model, load_device=dev, offload_device=torch.device("cpu"))
    latent = torch.zeros(batch, tm.latent_channels, hw, hw)
    (wrapped,) = collect.CoRe2Collect().wrap(model, f"bench-{name}", store_x)
    session = collect.session_of(wrapped)

    def run(m, seed):
        noise = comfy.sample.prepare_noise(latent, seed)  # a new trajectory per run (nothing skipped as a duplicate)
        out = comfy.sample.sample(m, noise, steps, 6.0, "euler", "normal", tm.positive, tm.negative, latent,
                                  disable_pbar=True, seed=seed)
        if m is wrapped:
            session.recorder.flush()  # a no-op wait where sampler wrappers already committed the run
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return out

    run(model, 0)
    run(wrapped, 0)  # warm-up (also creates the dataset)
    plain, rec = [], []
    for r in range(reps):
        for m, acc in ((model, plain), (wrapped, rec)) if r % 2 == 0 else ((wrapped, rec), (model, plain)):
            t0 = time.perf_counter()
            run(m, 100 + r)
            acc.append(time.perf_counter() - t0)
    mib = sum(p.stat().st_size for p in session.folder.glob("*")) / 2**20
    p, q = statistics.median(plain), statistics.median(rec)
    st = session.recorder.stats
    print(f"{name:<12} {p:>9.3f} {q:>11.3f} {100 * (q - p) / p:>8.1f}% {st['evaluations']:>6} {mib:>12.2f} "
          f"{st['put_wait_s']:>13.4f}")
    session.close()
    return {"plain_s": round(p, 3), "recorded_s": round(q, 3), "overhead_pct": round(100 * (q - p) / p, 1),
            "evaluations": st["evaluations"], "mib_written": round(mib, 2), "queue_wait_s": round(st["put_wait_s"], 4)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", action="append", choices=sorted(CASES), help="default: sd15-32 and sd15-b4-48")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave)")
    ap.add_argument("--store-x", action="store_true", help="also record x_t")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, help="also write the measured cases to this JSON file (what bench/run.py reads)")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from tools import comfy_env

    inst = comfy_env.activate()
    comfy_env.load_pack()
    from comfyui_core2.nodes import paths

    tmp = Path(tempfile.mkdtemp(prefix="core2-bench-"))
    os.environ["CORE2_HOME"] = str(tmp)
    if paths.folder_paths is not None:
        paths.folder_paths.set_output_directory(str(tmp / "output"))
    dev = torch.device(args.device)
    print(f"ComfyUI: {inst.describe()}; device {dev}; torch threads {torch.get_num_threads()}; store_x={args.store_x}; "
          f"reps={args.reps}")
    print(f"{'case':<12} {'plain s':>9} {'recorded s':>11} {'overhead':>9} {'evals':>6} {'MiB written':>12} {'queue wait s':>13}")
    cases = {name: measure(name, args.reps, dev, args.store_x) for name in args.case or ["sd15-32", "sd15-b4-48"]}
    if args.json:
        args.json.write_text(json.dumps({"cases": cases}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
