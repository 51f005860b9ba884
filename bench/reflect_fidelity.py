"""Fidelity of a Reflect-trained weak model across CFG scales, on a tiny SDXL-structured model (CPU, minutes).

Trains on trajectories collected at g = 5 and evaluates on held-out prompts from trajectories collected at other
scales (the states x_t differ: CFG at g = 3 or 8 takes other paths), with the target CFG output at each one's own g.
The relative error ‖f(r_c) − r_cfg‖ / ‖r_cfg − r_c‖ of the identity map (cfg = 1) is 1.0.

    python bench/reflect_fidelity.py [--steps 300] [--prompts 8] [--threads 1]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]  # run as a script: the repository root holds tools/ and testkit/


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-cfg", type=float, default=5.0)
    ap.add_argument("--eval-cfg", type=float, nargs="*", default=[2.0, 3.0, 5.0, 8.0])
    a = ap.parse_args()
    from tools import comfy_env

    comfy_env.activate()
    import torch

    torch.set_num_threads(a.threads)
    comfy_env.load_pack()
    from testkit import collect_helpers, tiny_models

    from comfyui_core2.core2.dataset import DatasetReader
    from comfyui_core2.core2.train import TrainSettings, evaluate, train

    tm = tiny_models.build_sdxl()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sets = {}
        for g in sorted({a.train_cfg, *a.eval_cfg}):
            sets[g] = collect_helpers.collect(tm, tmp / f"g{g}", n_prompts=a.prompts, seeds=(1,), batch=2, steps=8, cfg=g)
        s = TrainSettings(steps=a.steps, batch_size=8, lr=1e-3, size="small", val_fraction=0.25, eval_every=a.steps,
                          arch_overrides=dict(width=32, mults=[1, 2], blocks=1, emb_dim=128))
        res = train(sets[a.train_cfg], tmp / "w.safetensors", s)
        print(res.summary)
        print(f"\ntrained at g={a.train_cfg}; held-out prompts, trajectories collected at g:")
        for g in a.eval_cfg:
            r = DatasetReader(sets[g])
            _, val = r.split(0.25, seed=0)
            m = evaluate(res.model, r, val, "cpu")
            bins = ", ".join(f"{b['rel_err']:.3f}" for b in m["by_sigma"])
            print(f"  g={g:4}: relative error {m['rel_err']:.4f} (median {m['rel_err_median']:.4f}); by σ bin low→high: {bins}"
                  "   [identity = 1.0]")


if __name__ == "__main__":
    main()
