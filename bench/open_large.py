"""Opening a big dataset: time and peak memory of DatasetReader(folder) and of its train/validation split.

    python bench/open_large.py                  # 100,000 items in a temporary folder
    python bench/open_large.py --items 20000 --eager   # also open with every item's files checked (the old way)

Builds a synthetic dataset of N items the way Collect lays one out (manifest.json, items.jsonl, one prompt file per
prompt, one small traj-*.safetensors shard per item: 2 steps of a 4×8×8 latent with x_t), written directly (no
fsync, no lock) so that building it takes seconds. Then opens it in a fresh Python process (so that the peak RSS
is the reader's, not the builder's) and prints one JSON line: items, seconds and peak RSS (MiB) after the imports,
after the open and after the split, shards opened during the open, the same for Reflect's whole first phase
(core2.train.open_data: open, dataset facts, split, checks), and for an open that checks every item (--eager). A benchmark, not a test (tests/test_data_integrity.py checks the behaviour on 2000 items).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]  # run as a script: the repository root holds core2/

HEADER = {"family": "sdxl", "prediction": "eps", "latent_channels": 4, "latent_hw": [8, 8], "base_model_hash": "bench",
          "base_model_name": "synthetic"}
SEEDS_PER_PROMPT = 4


def build(folder: Path, n_items: int) -> None:
    """A synthetic dataset of n_items trajectories (SEEDS_PER_PROMPT seeds per prompt) in folder."""
    import torch

    from core2 import dataset as ds
    from core2.files import safetensors_bytes

    folder.mkdir(parents=True, exist_ok=True)
    n_prompts = -(-n_items // SEEDS_PER_PROMPT)
    prompt_file = safetensors_bytes({"pos_tokens": torch.zeros(3, 8, dtype=torch.float16),
                                     "pos_pooled": torch.zeros(4, dtype=torch.float16)})
    shard = safetensors_bytes({"cond": torch.zeros(2, 4, 8, 8, dtype=torch.float16),
                               "uncond": torch.ones(2, 4, 8, 8, dtype=torch.float16),
                               "x": torch.zeros(2, 4, 8, 8, dtype=torch.float16), "sigma": torch.tensor([2.0, 1.0]),
                               "cfg": torch.full((2,), 5.0), "step": torch.arange(2)})
    prompts, lines = {}, []
    for p in range(n_prompts):
        pid = ds.prompt_id(f"prompt {p}", None)
        prompts[pid] = {"positive": f"prompt {p}", "negative": None, "file": f"prompt-{pid}.safetensors",
                        "shapes": {"pos_tokens": [3, 8], "pos_pooled": [4]}}
        (folder / prompts[pid]["file"]).write_bytes(prompt_file)
        for j in range(min(SEEDS_PER_PROMPT, n_items - p * SEEDS_PER_PROMPT)):
            seed = ds.trajectory_seed(0, pid, j)
            key = ds.item_key(pid, seed)
            entry = {"key": key, "prompt_id": pid, "seed": seed, "batch_index": 0, "shard": f"traj-{key}.safetensors",
                     "n": 2, "x": True, "cfgs": [5.0], "run": 0}
            (folder / entry["shard"]).write_bytes(shard)
            lines.append(json.dumps(entry, separators=(",", ":")))
    (folder / ds.ITEMS_LOG).write_text("\n".join(lines) + "\n")
    manifest = {"format": ds.FORMAT, "format_version": ds.FORMAT_VERSION, "pack_version": "bench",
                "header": HEADER, "runs": [{"sampler": "euler", "scheduler": "normal", "steps": 2, "cfg": 5.0}],
                "prompts": prompts, "items": []}
    (folder / ds.MANIFEST).write_text(json.dumps(manifest))


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure_open(folder: Path, check_all: bool | None) -> dict:
    """In this process: open the dataset (counting the shard files opened) and split it."""
    from core2 import dataset as ds

    opened = [0]
    real_open = ds._open_file

    def counting(folder_, name, what):
        opened[0] += what == "shard"
        return real_open(folder_, name, what)

    ds._open_file = counting
    base = _rss_mib()
    t0 = time.perf_counter()
    reader = ds.DatasetReader(folder, check_all=check_all)
    t_open = time.perf_counter() - t0
    rss_open = _rss_mib()
    t0 = time.perf_counter()
    train, val = reader.split(0.1, seed=0)
    t_split = time.perf_counter() - t0
    out = {"items": len(reader.items), "checked_at_open": reader.checked_at_open, "open_s": round(t_open, 3),
           "split_s": round(t_split, 3), "train_items": len(train), "val_items": len(val),
           "shards_opened_at_open": opened[0], "peak_rss_mib_after_imports": round(base, 1),
           "peak_rss_mib_after_open": round(rss_open, 1), "peak_rss_mib_after_split": round(_rss_mib(), 1)}
    if check_all is None:  # what Reflect does before its first step: open, facts, split, checks
        from core2.train import TrainSettings, open_data

        opened[0], t0 = 0, time.perf_counter()
        open_data(folder, TrainSettings(val_fraction=0.1))
        out.update(train_open_data_s=round(time.perf_counter() - t0, 3), shards_opened_by_open_data=opened[0],
                   peak_rss_mib_after_open_data=round(_rss_mib(), 1))
    return out


def _in_fresh_process(*args: str) -> dict | None:
    """Run this script with args in a new process. (This process stays small, importing neither torch nor the
    dataset: on Linux a child's peak RSS starts at its parent's RSS at fork, even across exec.)"""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    lines = r.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--eager", action="store_true", help="also open it checking every item's files at open")
    p.add_argument("--keep", help="build into this folder and keep it (default: a temporary folder)")
    p.add_argument("--open-only", help=argparse.SUPPRESS)
    p.add_argument("--build-only", help=argparse.SUPPRESS)
    p.add_argument("--check-all", default="None", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.open_only:
        print(json.dumps(measure_open(Path(a.open_only), {"None": None, "True": True, "False": False}[a.check_all])))
        return 0
    if a.build_only:
        build(Path(a.build_only), a.items)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(a.keep) if a.keep else Path(tmp) / "large"
        t0 = time.perf_counter()
        _in_fresh_process("--build-only", str(folder), "--items", str(a.items))
        out = {"bench": "open_large", "items": a.items, "build_s": round(time.perf_counter() - t0, 1),
               "lazy": _in_fresh_process("--open-only", str(folder))}
        if a.eager:
            out["eager"] = _in_fresh_process("--open-only", str(folder), "--check-all", "True")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
