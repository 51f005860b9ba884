"""Reflect: the conv-FiLM weak model, training on a tiny model's trajectories, files, nodes, failure handling."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from testkit import collect_helpers

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(width=32, mults=[1, 2], blocks=1, emb_dim=128)  # a test-sized "small"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from testkit import tiny_models

    folder = tmp_path_factory.mktemp("reflect") / "ds"
    return collect_helpers.collect(tiny_models.build_sdxl(), folder, n_prompts=8, seeds=(1,), batch=2, steps=8, cfg=5.0)


def settings(**kw):
    from comfyui_core2.core2.train import TrainSettings

    base = dict(steps=200, batch_size=8, lr=1e-3, size="small", seed=0, val_fraction=0.25, eval_every=100,
                checkpoint_every=1000, arch_overrides=SMALL)
    base.update(kw)
    return TrainSettings(**base)


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    from comfyui_core2.core2.train import train

    out = tmp_path_factory.mktemp("models") / "weak.safetensors"
    return train(dataset, out, settings())


def feats(b=1, t=77, d=2048, p=1280, seed=0):
    from comfyui_core2.core2.weak import PromptFeatures

    g = torch.Generator().manual_seed(seed)
    return PromptFeatures(torch.randn(b, t, d, generator=g), torch.randn(b, p, generator=g))


# --- the architecture ---------------------------------------------------------------------------------------------
def test_sizes_run_from_cheapest_to_best_fitting():
    """The Reflect node lists the sizes in the order its tooltip reads them (tiny is fastest, large fits best):
    each has more parameters than the one before it, at SDXL's feature widths and at the toy's."""
    import math

    from comfyui_core2.core2 import arch

    assert arch.SIZES[0] == "tiny" and arch.SIZES[-1] == "large"
    for dims in ((4, 2048, 1280), (12, 64, 64)):
        counts = [sum(math.prod(s) for s in arch.parameter_shapes(arch.make_config(size, *dims, x_input=True,
                                                                                   memory=True)).values())
                  for size in arch.SIZES]
        assert counts == sorted(counts) and len(set(counts)) == len(counts), counts


def test_weak_model_contract_and_free_cfg_knob():
    from comfyui_core2.core2 import arch
    from comfyui_core2.core2.weak import StepInfo

    torch.manual_seed(0)
    m = arch.build(arch.make_config("small", 4, 2048, 1280, family="sdxl", prediction="eps", **SMALL))
    rc = torch.randn(2, 4, 13, 18)  # odd size: padded inside, cropped back
    sigma = torch.tensor([3.0, 0.5])
    step = StepInfo(0, 10)
    ctx = m.prepare(feats(), feats(seed=1))
    # zero-initialised head: an untrained model is the identity map (cfg = 1) at every scale
    assert torch.equal(m.predict(rc, sigma, 7.0, step, ctx), rc)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    out = {g: m.predict(rc, sigma, g, step, ctx) for g in (1.0, 2.0, 3.0)}
    assert out[2.0].shape == rc.shape and torch.isfinite(out[2.0]).all()
    assert torch.allclose(out[1.0], rc, atol=1e-6)  # g = 1 is exactly the conditional output
    assert torch.allclose(out[3.0] - out[2.0], out[2.0] - out[1.0], atol=1e-5)  # affine in g: the scale is a free knob
    assert not torch.allclose(out[2.0], rc)
    # the negative prompt matters, and an absent negative uses the learned null embedding
    ctx_none = m.prepare(feats(), None)
    assert not torch.allclose(m.predict(rc, sigma, 5.0, step, ctx_none), m.predict(rc, sigma, 5.0, step, ctx))
    # σ is continuous: nearby σ give nearby outputs, and the step index is not used
    a = m.predict(rc, sigma, 5.0, StepInfo(0, 10), ctx)
    b = m.predict(rc, sigma * 1.001, 5.0, StepInfo(7, 30), ctx)
    assert (a - b).abs().max() < 1e-2
    # prompt tokens of another width (another text encoder) are refused with a clear message
    with pytest.raises(ValueError, match="token features"):
        m.prepare(feats(d=768), None)
    m.check_compatible("sdxl", 4, "eps")
    with pytest.raises(ValueError, match="sd3"):
        m.check_compatible("sd3", 16, "flow")


def test_x_input_model_works_in_x0_space():
    """With x_t input the net sees x0_c = x − σ·r_c and the scaled x_t; untrained it is the identity; it needs x."""
    from comfyui_core2.core2 import arch
    from comfyui_core2.core2.weak import StepInfo

    torch.manual_seed(0)
    m = arch.build(arch.make_config("small", 4, 2048, 1280, family="sdxl", prediction="eps", x_input=True, **SMALL))
    assert m.x_input and m.stem.in_channels == 8 and m.config["arch_version"] == arch.ARCH_VERSION
    rc, x = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16) * 4
    sigma = torch.tensor([3.0, 0.5])
    ctx = m.prepare(feats(), feats(seed=1))
    step = StepInfo(0, 10, extra={"x": x})
    assert torch.equal(m.predict(rc, sigma, 7.0, step, ctx), rc)
    with pytest.raises(ValueError, match="x_t"):
        m.predict(rc, sigma, 7.0, StepInfo(0, 10), ctx)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ru = m.predict_uncond(rc, sigma, ctx, x)
    # the same x0_c from another (x, r_c) pair with equal x_t scale gives the same x̂0_u: x − σ·r̂_u is a function of
    # (x0_c, x) only, so moving x while keeping x0_c changes the output
    x0c = x - sigma.view(-1, 1, 1, 1) * rc
    x0u = x - sigma.view(-1, 1, 1, 1) * ru
    ru2 = m.predict_uncond(rc, sigma, ctx, x * 1.5)
    assert not torch.allclose(ru, ru2)
    assert torch.isfinite(x0u).all() and (x0u - x0c).abs().max() > 0
    # files of version 1 (no x_input key) still build, as models without x input
    cfg1 = {k: v for k, v in m.config.items() if k != "x_input"}
    cfg1["arch_version"] = 1
    assert arch.build(cfg1).x_input is False


def test_split_holds_out_prompts_and_shared_seeds(tmp_path):
    """Collect Batch shares seeds across prompts: validation gets held-out prompts AND held-out seeds."""
    from comfyui_core2.core2.dataset import DatasetReader, DatasetWriter

    def write(folder, seeds_of):
        w = DatasetWriter(folder, {"family": "sdxl", "prediction": "eps", "latent_channels": 4, "latent_hw": [4, 4],
                                   "base_model_hash": "h"})
        t = {"cond": torch.zeros(2, 4, 4, 4), "uncond": torch.ones(2, 4, 4, 4), "sigma": torch.ones(2),
             "cfg": torch.full((2,), 5.0), "step": torch.arange(2)}
        for i in range(10):
            pid = w.add_prompt(f"p{i}", None, feats(t=4, d=8, p=4), None)
            for sd in seeds_of(i):
                w.add_trajectory(pid, sd, 0, dict(t, x=torch.zeros(2, 4, 4, 4)) if sd % 2 else t)
        return DatasetReader(folder)

    r = write(tmp_path / "shared", lambda i: range(5))
    train, val = r.split(0.2, seed=3)
    pid = lambda items: {it["prompt_id"] for it in items}  # noqa: E731
    seeds = lambda items: {it["seed"] for it in items}  # noqa: E731
    assert val and train and not (pid(train) & pid(val)) and not (seeds(train) & seeds(val))
    assert len(pid(val)) == 2 and len(seeds(val)) == 1 and len(train) == 8 * 4
    assert not r.seed_overlap(train, val)
    assert r.split(0.2, seed=3) == (train, val)  # deterministic
    # x_t is stored on odd seeds only in this dataset
    assert r.has_x([it for it in r.items if it["seed"] % 2]) and not r.has_x(r.items)
    # every trajectory with its own seed: a split by prompt already holds the seeds out
    r2 = write(tmp_path / "distinct", lambda i: [100 + i])
    train2, val2 = r2.split(0.2, seed=3)
    assert len(val2) == 2 and len(train2) == 8 and not r2.seed_overlap(train2, val2)
    # one seed shared by all prompts: it cannot be held out, and seed_overlap says so
    r3 = write(tmp_path / "one", lambda i: [7])
    train3, val3 = r3.split(0.2, seed=3)
    assert len(val3) == 2 and r3.seed_overlap(train3, val3)


# --- training -----------------------------------------------------------------------------------------------------
def test_training_beats_identity_on_held_out_prompts(trained, dataset):
    from comfyui_core2.core2.dataset import manifest_hash

    m = trained.metrics
    assert m["rows"] == 32 and m["validation_on"] == "held-out prompts"
    assert m["rel_err"] < 0.8, trained.summary  # identity map f(r_c) = r_c scores exactly 1.0
    assert len(m["by_sigma"]) == 4 and all(b["rel_err"] < 1.0 for b in m["by_sigma"])
    # the relative error of r̂_u-parameterised guidance is the same at every CFG scale
    errs = [v for v in m["by_cfg"].values()]
    assert max(errs) - min(errs) < 1e-6 and abs(errs[0] - m["rel_err"]) < 1e-4
    # the curve went down
    val = [v for _, v in trained.history["val"]]
    assert val[-1] < val[0] and len(trained.history["train"]) == 200
    meta = trained.model.metadata
    assert meta["format"] == "core2-weak-model" and meta["dataset"]["manifest_hash"] == manifest_hash(dataset)
    assert meta["family"] == "sdxl" and meta["latent_channels"] == 4 and meta["prediction"] == "eps"
    assert meta["cfg"] == [5.0] and meta["base_model"]["key_hash"] and meta["config"]["arch"] == "core2.conv_film"
    assert meta["training"]["complete"] is True and meta["training"]["step"] == 200
    assert abs(meta["val_metrics"]["rel_err"] - m["rel_err"]) < 1e-9
    assert "relative error" in trained.summary and trained.model.trained_cfg == 5.0


def test_keep_best_guards_against_overfitting(tmp_path):
    """Unseen noise on a tiny random UNet: nothing transfers, training overfits; the best-validation weights are kept."""
    from testkit import tiny_models

    from comfyui_core2.core2.train import KEEP_BEST_MARGIN, train

    ds = collect_helpers.collect(tiny_models.build_sdxl(), tmp_path / "ds", n_prompts=6, seeds=(1,), batch=2, steps=6,
                                 distinct_seeds=True)
    res = train(ds, tmp_path / "w.safetensors", settings(steps=60, eval_every=15, val_fraction=0.34))
    errs = dict((s, e) for s, e in res.history["val"])  # the validation score of the training loss ("mixed")
    best_step = min(errs, key=errs.get)
    if errs[best_step] >= errs[60] * (1 - KEEP_BEST_MARGIN):  # within the margin: the last weights stay
        best_step = 60
    assert res.metrics["loss"] == "mixed"
    assert res.metrics["score"] == pytest.approx(errs[best_step])
    assert res.metrics["score"] == pytest.approx(0.5 * (res.metrics["rel_err"] + res.metrics["rel_err_x0"]))
    assert res.model.metadata["training"]["best_step"] == best_step
    if best_step != 60:
        assert "kept the weights of step" in res.summary
    assert res.metrics["score"] <= min(errs.values()) / (1 - KEEP_BEST_MARGIN) + 1e-12


def test_losses_identity_is_one_and_x0_weights_high_noise_rows():
    import torch

    from comfyui_core2.core2.train import relative_loss, training_loss, val_score, x0_loss

    g = torch.Generator().manual_seed(0)
    rc, ru = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    sigma = torch.tensor([10.0, 0.1])
    for kind in ("relative", "x0", "mixed"):  # the identity map r̂_u = r_c (i.e. cfg = 1) scores exactly 1
        assert float(training_loss(kind, rc, ru, rc, sigma)) == pytest.approx(1.0)
    # the same error on the high-σ row costs the x0 loss ~10⁴ × more than on the low-σ row; the relative loss
    # (per row) does not care which row it is
    err = 0.1 * torch.randn(1, 4, 8, 8, generator=g)
    hi, lo = ru.clone(), ru.clone()
    hi[0] += err[0]
    lo[1] += err[0]
    assert float(x0_loss(hi, ru, rc, sigma)) > 1e3 * float(x0_loss(lo, ru, rc, sigma))
    ratio = float(relative_loss(hi, ru, rc)) / float(relative_loss(lo, ru, rc))
    assert 0.3 < ratio < 3
    assert float(training_loss("mixed", hi, ru, rc, sigma)) == pytest.approx(
        0.5 * float(relative_loss(hi, ru, rc) + x0_loss(hi, ru, rc, sigma)))
    m = {"rel_err": 0.8, "rel_err_x0": 0.4}
    assert (val_score(m, "relative"), val_score(m, "x0"), val_score(m, "mixed")) == (0.8, 0.4, pytest.approx(0.6))


def test_evaluate_scores_the_training_loss_by_default(dataset, trained):
    """evaluate() without a loss scores what Reflect trains by default (mixed), as the training run reports it."""
    from comfyui_core2.core2.dataset import DatasetReader
    from comfyui_core2.core2.train import TrainSettings, evaluate, val_score

    r = DatasetReader(dataset)
    m = evaluate(trained.model, r, r.items, "cpu")
    assert m["loss"] == TrainSettings().loss == "mixed"
    assert m["score"] == pytest.approx(val_score(m, "mixed")) and m["score"] != pytest.approx(m["rel_err"])


def test_unknown_loss_is_refused_before_work(tmp_path):
    from comfyui_core2.core2.train import train

    with pytest.raises(ValueError, match="loss must be one of mixed, relative, x0"):
        train(tmp_path / "nowhere", tmp_path / "w.safetensors", settings(loss="mse"))


def test_save_load_round_trip_is_exact(trained):
    from comfyui_core2.core2.weak import StepInfo
    from comfyui_core2.core2.weights_io import load_weak_model

    loaded = load_weak_model(trained.path)
    assert loaded.config == trained.model.config and loaded.trained_cfg == 5.0
    rc, sigma = torch.randn(2, 4, 16, 16), torch.tensor([5.0, 0.2])
    p, n = feats(), feats(seed=3)
    with torch.no_grad():
        a = trained.model.predict(rc, sigma, 6.0, StepInfo(1, 8), trained.model.prepare(p, n))
        b = loaded.predict(rc, sigma, 6.0, StepInfo(1, 8), loaded.prepare(p, n))
    assert torch.equal(a, b)


def test_training_stores_the_guidance_calibration_it_measured(trained):
    """core2/calibration.py: the finished file keeps the gain measured on held-out rows, and the loaded model uses it."""
    from comfyui_core2.core2 import calibration
    from comfyui_core2.core2.weights_io import load_weak_model, read_metadata

    meta = read_metadata(trained.path)
    assert meta["guidance_gain"] is not None and all(1.0 <= g <= calibration.MAX_GAIN for g in meta["guidance_gain"]["gain"])
    loaded = load_weak_model(trained.path)
    assert loaded.guidance_gain == trained.model.guidance_gain
    assert "guidance calibrated" in trained.summary
    from comfyui_core2.nodes.reflect import describe

    assert "guidance calibrated ×" in describe(loaded)  # the loader's info output says so


def test_cancel_leaves_checkpoint_and_resume_continues(dataset, tmp_path):
    import comfy.model_management as mm

    from comfyui_core2.core2.train import optimizer_path, partial_path, train
    from comfyui_core2.core2.weights_io import load_weak_model, read_metadata

    out = tmp_path / "w.safetensors"

    def cancel_at_7(step, total, loss):
        if step == 7:
            raise mm.InterruptProcessingException()

    with pytest.raises(mm.InterruptProcessingException):
        train(dataset, out, settings(steps=12, eval_every=5), on_step=cancel_at_7)
    assert not out.exists()  # the unfinished state goes to the .partial file, never to the model's name
    part = partial_path(out)
    meta = read_metadata(part)
    assert meta["training"]["step"] == 7 and meta["training"]["complete"] is False
    assert optimizer_path(part).is_file()
    load_weak_model(part)  # a usable model already
    with pytest.raises(FileExistsError, match="resume"):
        train(dataset, out, settings(steps=12))
    res = train(dataset, out, settings(steps=12, eval_every=5, resume=True))
    assert res.step == 12
    assert [s for s, _ in res.history["train"]] == list(range(1, 13))
    assert read_metadata(out)["training"]["complete"] is True
    assert not part.exists() and not optimizer_path(part).exists() and optimizer_path(out).is_file()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(dataset, tmp_path):
    from comfyui_core2.core2.train import NonFiniteLossError, train

    out = tmp_path / "w.safetensors"
    train(dataset, out, settings(steps=4))
    good = out.read_bytes()
    with pytest.raises(NonFiniteLossError, match=r"w.safetensors \(complete model, step 4\)") as e:
        train(dataset, out, settings(steps=60, lr=1e12, resume=True, weight_decay=0.0, grad_clip=0.0,
                                     checkpoint_every=2, eval_every=2))
    assert out.read_bytes() == good and "resume" in str(e.value)
    # nothing saved yet: the message does not say "resume"
    fresh = tmp_path / "fresh.safetensors"
    with pytest.raises(NonFiniteLossError, match="No checkpoint had been written") as e:
        train(dataset, fresh, settings(steps=60, lr=1e12, weight_decay=0.0, grad_clip=0.0))
    assert "resume" not in str(e.value) and not fresh.exists()


def test_disk_full_at_the_final_save_says_so_and_keeps_the_files(dataset, tmp_path, monkeypatch):
    import errno

    from comfyui_core2.core2 import files
    from comfyui_core2.core2.train import TrainingError, train

    out = tmp_path / "w.safetensors"
    train(dataset, out, settings(steps=4))
    good = out.read_bytes()

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "replace", disk_full)
    with pytest.raises(TrainingError, match=r"disk .* is full.*w.safetensors \(complete model, step 4\).*resume"):
        train(dataset, out, settings(steps=6, resume=True))
    monkeypatch.undo()
    assert out.read_bytes() == good and not list(tmp_path.glob(".*.tmp"))
    assert out.stat().st_mode & 0o777 == files.FILE_MODE  # readable like ComfyUI's own outputs (0644)


def _nan_validation(monkeypatch):
    """Validation scores NaN from now on (weights that diverged but are still finite)."""
    from comfyui_core2.core2 import train as tr

    real = tr.evaluate

    def nan_eval(*a, **k):
        return {**real(*a, **k), "score": float("nan")}

    monkeypatch.setattr(tr, "evaluate", nan_eval)


def test_a_checkpoint_with_nan_validation_is_never_saved(dataset, tmp_path, monkeypatch):
    import comfy.model_management as mm

    from comfyui_core2.core2.train import NonFiniteLossError, partial_path, train

    out = tmp_path / "w.safetensors"
    train(dataset, out, settings(steps=4))
    good = out.read_bytes()
    _nan_validation(monkeypatch)

    def cancel_at_7(step, total, loss):
        if step == 7:
            raise mm.InterruptProcessingException()

    with pytest.raises(mm.InterruptProcessingException):
        train(dataset, out, settings(steps=12, resume=True, checkpoint_every=2, eval_every=2), on_step=cancel_at_7)
    assert out.read_bytes() == good and not partial_path(out).exists()
    with pytest.raises(NonFiniteLossError, match=r"not finite.*w.safetensors \(complete model, step 4\)"):
        train(dataset, out, settings(steps=6, resume=True))
    assert out.read_bytes() == good and not partial_path(out).exists()


def test_cancel_of_a_resumed_run_keeps_the_finished_model(dataset, tmp_path, caplog):
    import comfy.model_management as mm

    from comfyui_core2.core2.train import partial_path, train
    from comfyui_core2.core2.weights_io import read_metadata

    out = tmp_path / "w.safetensors"
    train(dataset, out, settings(steps=4))
    good = out.read_bytes()

    def cancel_at_7(step, total, loss):
        if step == 7:
            raise mm.InterruptProcessingException()

    with caplog.at_level("WARNING"), pytest.raises(mm.InterruptProcessingException):
        train(dataset, out, settings(steps=12, resume=True), on_step=cancel_at_7)
    assert out.read_bytes() == good
    assert read_metadata(partial_path(out))["training"]["step"] == 7
    assert "w.safetensors (complete model, step 4) and w.partial.safetensors (unfinished checkpoint, step 7)" in caplog.text
    res = train(dataset, out, settings(steps=12, resume=True))  # continues from the newer .partial file
    assert res.step == 12 and res.history["train"][-1][0] == 12


def test_a_worse_model_never_replaces_a_finished_one(trained, dataset, tmp_path):
    import shutil

    from comfyui_core2.core2.train import optimizer_path, partial_path, train
    from comfyui_core2.core2.weights_io import read_metadata

    out = tmp_path / "w.safetensors"
    shutil.copy(trained.path, out)
    shutil.copy(optimizer_path(trained.path), optimizer_path(out))
    good = out.read_bytes()
    # a few steps at a destructive learning rate: finite weights, much worse validation
    res = train(dataset, out, settings(steps=206, lr=3.0, resume=True, eval_every=1000))
    assert out.read_bytes() == good
    assert "did not beat the finished w.safetensors" in res.summary
    assert read_metadata(partial_path(out))["training"]["step"] == 206
    assert res.metrics["score"] == pytest.approx(trained.metrics["score"], rel=1e-4)
    # resuming a finished model without more steps changes nothing
    partial_path(out).unlink()
    res = train(dataset, out, settings(steps=200, resume=True))
    assert out.read_bytes() == good and not partial_path(out).exists() and "nothing to do" in res.summary


def test_out_of_memory_gives_advice(dataset, tmp_path, monkeypatch):
    from comfyui_core2.core2 import arch
    from comfyui_core2.core2.train import OutOfMemoryTrainingError, train

    def oom(*a, **k):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(arch.ConvFiLMWeakModel, "predict_uncond", oom)
    with pytest.raises(OutOfMemoryTrainingError, match="Lower batch_size"):
        train(dataset, tmp_path / "o.safetensors", settings(steps=3))
    assert not (tmp_path / "o.safetensors").exists()


def test_bad_datasets_give_clear_errors(tmp_path, dataset):
    from comfyui_core2.core2.dataset import DatasetError
    from comfyui_core2.core2.train import train

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="not a CoRe² dataset"):
        train(empty, tmp_path / "a.safetensors", settings())
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(DatasetError, match="not a CoRe² dataset"):
        train(foreign, tmp_path / "a.safetensors", settings())
    no_items = tmp_path / "no_items"
    no_items.mkdir()
    man = json.loads((Path(dataset) / "manifest.json").read_text())
    man["items"] = []
    (no_items / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(DatasetError, match="no trajectories"):
        train(no_items, tmp_path / "a.safetensors", settings())
    with pytest.raises(ValueError, match="size"):
        train(dataset, tmp_path / "a.safetensors", settings(size="huge"))
    assert not (tmp_path / "a.safetensors").exists()


def test_failed_write_keeps_previous_file(trained, tmp_path, monkeypatch):
    from comfyui_core2.core2 import files
    from comfyui_core2.core2.weights_io import load_weak_model, save_weak_model

    path = tmp_path / "keep.safetensors"
    save_weak_model(path, trained.model, {"note": "v1"})
    before = path.read_bytes()

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", disk_full)
    with torch.no_grad():
        trained.model.head.bias.add_(1.0)
    try:
        with pytest.raises(OSError, match="No space"):
            save_weak_model(path, trained.model, {"note": "v2"})
    finally:
        with torch.no_grad():
            trained.model.head.bias.sub_(1.0)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.safetensors"]  # no temporary file left behind
    assert load_weak_model(path).metadata["note"] == "v1"


# --- loader registry ----------------------------------------------------------------------------------------------
def test_loader_registry_and_official_hook(tmp_path, monkeypatch, trained):
    import types

    from safetensors.torch import save_file

    from comfyui_core2.core2 import weights_io
    from comfyui_core2.core2.weak import IdentityWeakModel

    foreign = tmp_path / "foreign.safetensors"
    save_file({"lora.weight": torch.zeros(2, 2)}, str(foreign))
    with pytest.raises(weights_io.WeakModelFileError, match="not a weak model"):
        weights_io.load_weak_model(foreign)

    # official CoRe² weights (.pth) reach core2/official through is_official_state_dict / load_official
    pth = tmp_path / "official.pth"
    torch.save({"transformer_blocks.0.attn.to_q.weight": torch.zeros(2, 2)}, str(pth))
    seen = {}

    def is_official(keys):
        return any(k.startswith("transformer_blocks.") for k in keys)

    def load_official(obj):
        seen["obj"] = obj
        return IdentityWeakModel()

    fake = types.ModuleType("comfyui_core2.core2.official")
    fake.is_official_state_dict, fake.load_official = is_official, load_official
    monkeypatch.setitem(sys.modules, "comfyui_core2.core2.official", fake)
    m = weights_io.load_weak_model(pth)
    assert isinstance(m, IdentityWeakModel) and set(seen["obj"]) == {"transformer_blocks.0.attn.to_q.weight"}
    assert not m.training and not any(p.requires_grad for p in m.parameters())

    # a registered loader wins for what it recognises
    weights_io.register_loader("test-lora", lambda p, keys, meta: "lora.weight" in keys, lambda p, sd, meta: IdentityWeakModel())
    try:
        assert isinstance(weights_io.load_weak_model(foreign), IdentityWeakModel)
    finally:
        weights_io._LOADERS[:] = [e for e in weights_io._LOADERS if e[0] != "test-lora"]
    # pickles with code are refused (weights_only)
    evil = tmp_path / "evil.pth"
    torch.save({"x": IdentityWeakModel()}, str(evil))
    with pytest.raises(weights_io.WeakModelFileError, match="plain tensors"):
        weights_io.load_weak_model(evil)


# --- command line -------------------------------------------------------------------------------------------------
def test_command_line_trainer_without_comfyui(dataset, tmp_path):
    out = tmp_path / "cli.safetensors"
    code = ("import sys, core2.train as t\n"
            "rc = t.main(sys.argv[1:])\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('comfy', 'folder_paths', 'nodes', 'comfy_extras'))\n"
            "assert not bad, bad\n"
            "sys.exit(rc)\n")
    args = ["--dataset", str(dataset), "--out", str(out), "--steps", "3", "--batch-size", "4", "--size", "small",
            "--val-fraction", "0.25", "--device", "cpu", "--plot", str(tmp_path / "loss.png")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert out.is_file() and (tmp_path / "loss.png").stat().st_size > 1000
    assert "relative error" in r.stderr
    r2 = subprocess.run([sys.executable, "-c", code, "--dataset", str(tmp_path), "--out", str(tmp_path / "x.safetensors")],
                        cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert r2.returncode == 2 and "not a CoRe² dataset" in r2.stderr


# --- nodes --------------------------------------------------------------------------------------------------------
@pytest.fixture
def comfy_dirs(comfy_folders, dataset):
    """Redirected ComfyUI folders with the test dataset in the datasets folder."""
    import shutil

    from comfyui_core2.nodes import paths

    shutil.copytree(dataset, paths.datasets_dir() / "tinyset")
    return comfy_folders


def test_nodes_train_cancel_resume_and_load(comfy_dirs, tiny, monkeypatch):
    import comfy.model_management as mm
    import comfy.utils

    from comfyui_core2.nodes import paths, reflect

    assert reflect.NODE_DISPLAY_NAME_MAPPINGS["CoRe2Reflect"] == "CoRe² Reflect (Train Weak Model)"
    assert "tinyset" in reflect.CoRe2Reflect.INPUT_TYPES()["required"]["dataset"][0]
    node = reflect.CoRe2Reflect()
    args = dict(dataset="tinyset", size="auto", steps=10, batch_size=4, learning_rate=1e-3, seed=0, val_fraction=0.25,
                save_name="node weak")

    # ComfyUI runs nodes under inference mode; a cancel arrives through the progress hook's interrupt flag
    def hook(value, total, preview, *a, **k):
        if value == 4:
            mm.interrupt_current_processing(True)

    # ComfyUI 2026 throttles progress updates (at most one per 100 ms and per few percent): let every step through
    monkeypatch.setattr(comfy.utils, "PROGRESS_THROTTLE_MIN_INTERVAL", 0.0, raising=False)
    monkeypatch.setattr(comfy.utils, "PROGRESS_THROTTLE_MIN_PERCENT", 0.0, raising=False)
    old_hook = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        with torch.inference_mode(), pytest.raises(mm.InterruptProcessingException):
            node.reflect(resume=False, **args)
    finally:
        comfy.utils.set_progress_bar_global_hook(old_hook)
        mm.interrupt_current_processing(False)
    saved = paths.weak_model_save_dir() / "node weak.safetensors"
    from comfyui_core2.core2.weights_io import read_metadata

    assert not saved.exists()  # unfinished: only the .partial checkpoint
    assert read_metadata(saved.with_name("node weak.partial.safetensors"))["training"]["step"] == 4
    with torch.inference_mode():
        out = node.reflect(resume=True, **args)
    weak, img, summary = out["result"]
    assert out["ui"]["text"] == [summary]  # the verdict and summary show on the node
    assert summary.splitlines()[0].startswith(("useful", "barely", "no better", "not checked"))
    assert "4 → 10" in summary and weak.trained_cfg == 5.0
    assert "(tiny, " in summary and read_metadata(saved)["training"]["size"] == "tiny"  # auto on the CPU
    assert img.ndim == 4 and img.shape[0] == 1 and img.shape[-1] == 3 and 0 <= float(img.min()) and float(img.max()) <= 1
    assert float(img.std()) > 0.01  # something was drawn
    with pytest.raises(ValueError, match="dataset"):
        node.reflect(resume=False, **{**args, "dataset": "(use dataset_override)"})
    with pytest.raises(ValueError, match="invalid"):
        node.reflect(resume=False, **{**args, "dataset_override": "../escape"})

    loader = reflect.CoRe2LoadWeakModel()
    assert "node weak.safetensors" in reflect.CoRe2LoadWeakModel.INPUT_TYPES()["required"]["weak_model_name"][0]
    with torch.inference_mode():
        w2, info = loader.load("node weak.safetensors", model=tiny("sdxl").patcher)
    assert "matches the connected MODEL" in info and "steps 10/10" in info
    with pytest.raises(ValueError, match="sd3"):
        loader.load("node weak.safetensors", model=tiny("sd3").patcher)
    # same family, another architecture fingerprint (keys and shapes): a warning, not an error
    from comfyui_core2.core2.weights_io import save_weak_model

    meta = read_metadata(saved)
    meta["base_model"] = {**meta["base_model"], "key_hash": "0123456789abcdef"}
    save_weak_model(saved.with_name("finetune.safetensors"), w2, {k: v for k, v in meta.items() if k != "format"})
    if paths.folder_paths is not None and hasattr(paths.folder_paths, "filename_list_cache"):
        paths.folder_paths.filename_list_cache.clear()
    _, info = loader.load("finetune.safetensors", model=tiny("sdxl").patcher)
    assert "warning" in info and "another architecture" in info


def test_auto_size_is_tiny_on_a_cpu_and_medium_on_a_gpu(comfy_dirs):
    from comfyui_core2.nodes.reflect import AUTO_SIZE, CoRe2Reflect, size_for_device

    sizes, opts = CoRe2Reflect.INPUT_TYPES()["required"]["size"]
    assert sizes[0] == opts["default"] == AUTO_SIZE and "tiny" in sizes and "medium" in sizes
    assert size_for_device(AUTO_SIZE, torch.device("cpu")) == "tiny"
    assert size_for_device(AUTO_SIZE, "cuda:0") == size_for_device(AUTO_SIZE, "mps") == "medium"
    assert size_for_device("large", "cpu") == "large"  # a size the user chose is kept


def test_dataset_choices_keep_the_override_entry(comfy_dirs):
    """A saved workflow's dataset value must stay valid before and after datasets exist (re-queuing a chain)."""
    from comfyui_core2.nodes.reflect import USE_OVERRIDE, CoRe2Reflect

    choices = CoRe2Reflect.INPUT_TYPES()["required"]["dataset"][0]
    assert choices[0] == USE_OVERRIDE and "tinyset" in choices
