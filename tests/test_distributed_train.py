"""Issue 20: Reflect on several processes (torchrun, DistributedDataParallel; core2/distributed.py).

What is checked: the ranks' shares of the loss add up to the one-process loss of the same global batch (values and
gradients, every loss kind, rows left out included); a 2-process gloo run on CPU records the same train-loss
history as a 1-process run of the same global batch, writes a file that loads, and that file resumes in one process
from its step.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"width": 8, "mults": [1, 2], "blocks": 1, "emb_dim": 16}


def _halves(t, cut):
    return t[:cut], t[cut:]


@pytest.mark.parametrize("kind", ["mixed", "relative", "x0"])
def test_rank_shares_add_up_to_the_one_process_loss_and_gradient(kind):
    from comfyui_core2.core2.distributed import SINGLE, World
    from comfyui_core2.core2.train import batch_totals, sharded_training_loss, training_loss

    g = torch.Generator().manual_seed(0)
    rc, ru, pred0 = (torch.randn(7, 4, 3, 3, generator=g) for _ in range(3))
    sigma = torch.rand(7, generator=g) * 5 + 0.1
    rc[2] = ru[2] + 1e-4  # a near-zero guidance row: the relative loss's floor, which depends on the whole batch
    weight = torch.ones(7)
    weight[5] = 0  # a row left out (non-finite in the data, or a stand-in)
    pred = pred0.clone().requires_grad_(True)
    keep = weight.bool()
    want = training_loss(kind, pred[keep], ru[keep], rc[keep], sigma[keep])
    want.backward()
    want_grad, pred.grad = pred.grad.clone(), None
    parts = [dict(cond=a, uncond=b, sigma=s) for a, b, s in zip(_halves(rc, 4), _halves(ru, 4), _halves(sigma, 4))]
    ws = _halves(weight, 4)
    totals = sum(batch_totals(p, w, SINGLE) for p, w in zip(parts, ws))  # what the all-reduce sums
    shares = [sharded_training_loss(kind, pr, p["uncond"], p["cond"], p["sigma"], w, totals, World(k, 2))
              for k, (pr, p, w) in enumerate(zip(_halves(pred, 4), parts, ws))]
    ddp_mean = sum(shares) / 2  # DistributedDataParallel averages the ranks' gradients
    ddp_mean.backward()
    assert torch.allclose(ddp_mean, want, rtol=1e-6)
    assert torch.allclose(pred.grad, want_grad, rtol=1e-5, atol=1e-9)


def test_the_global_batch_must_split_evenly_and_slices_cover_it():
    from comfyui_core2.core2.distributed import World, check_batch_size

    with pytest.raises(ValueError, match="multiple of 4"):
        check_batch_size(10, World(0, 4))
    check_batch_size(12, World(3, 4))
    for n in (0, 1, 3, 8, 10):
        parts = [World(k, 3).part(n) for k in range(3)]
        assert parts[0][0] == 0 and parts[-1][1] == n and all(a[1] == b[0] for a, b in zip(parts, parts[1:]))


def test_without_torchrun_a_run_is_one_process(monkeypatch):
    from comfyui_core2.core2 import distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.start("cpu") == (distributed.SINGLE, "cpu")
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc_per_node=1: still no process group
    assert distributed.env_world() is distributed.SINGLE


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from testkit import collect_helpers, tiny_models

    folder = tmp_path_factory.mktemp("ddp") / "ds"
    return collect_helpers.collect(tiny_models.build_sdxl(), folder, n_prompts=6, seeds=(1,), batch=2, steps=6,
                                   cfg=5.0, store_x=True)


def _train_cli(dataset, out, nproc: int, steps: int, *extra):
    args = ["--dataset", str(dataset), "--out", str(out), "--steps", str(steps), "--batch-size", "10", "--lr", "1e-3",
            "--size", "small", "--val-fraction", "0.34", "--device", "cpu", "--eval-every", "1000",
            "--checkpoint-every", "1000", "--arch-overrides", json.dumps(SMALL), *extra]
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, *launcher, "-m", "core2.train", *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    return r.stdout + r.stderr


def test_two_processes_train_like_one_on_the_same_global_batch_and_resume_in_one(dataset, tmp_path):
    from comfyui_core2.core2.weights_io import load_weak_model, read_metadata

    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    _train_cli(dataset, one, 1, 6)
    log2 = _train_cli(dataset, two, 2, 6)  # 48 training rows, batch 10: step 5 is an epoch's ragged last batch
    h1, h2 = (read_metadata(p)["history"]["train"] for p in (one, two))
    assert [s for s, _ in h1] == [s for s, _ in h2] == list(range(1, 7))
    for (_, a), (_, b) in zip(h1, h2):
        assert abs(a - b) <= 1e-4 * abs(a), (h1, h2)
    meta = read_metadata(two)
    assert meta["training"]["complete"] and meta["training"]["step"] == 6 and meta["training"]["processes"] == 2
    assert "processes" not in read_metadata(one)["training"]  # one process: the file is as before
    assert load_weak_model(two).memory
    assert log2.count("CoRe² weak model: two.safetensors") == 1  # rank 0 alone reports
    # resume with one process: it continues from step 6
    log3 = _train_cli(dataset, two, 1, 9, "--resume")
    meta = read_metadata(two)
    assert meta["training"]["step"] == 9 and "steps: 6 → 9" in log3
    assert [s for s, _ in meta["history"]["train"]] == list(range(1, 10))
    load_weak_model(two)
