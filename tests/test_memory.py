"""Weak models with guidance memory (core2/arch.py): they see the guidance measured on the latest slow step.

What is checked: a fresh memory model IS the reuse fill-in (on ComfyUI's own sampling path, where the sampler reports
slow steps), the training batches remember an earlier step of the same trajectory, a trained file round-trips and
keeps its memory, and the weak prediction on a slow step knows only the earlier slow steps.
"""
from __future__ import annotations

import random

import pytest
import torch

from comfyui_core2.core2 import arch, fillins
from comfyui_core2.core2.weak import GuidanceMemory, PromptFeatures, StepInfo
from comfyui_core2.nodes import refine

SMALL = dict(width=16, mults=[1, 2], blocks=1, emb_dim=64)


def _model(tm=None, **kw):
    torch.manual_seed(0)
    if tm is None:
        return arch.build(arch.make_config("small", 4, 8, 0, x_input=True, memory=True, **SMALL, **kw))
    from comfyui_core2.nodes import conditioning

    f = conditioning.features(tm.positive)
    return arch.build(arch.make_config("small", tm.latent_channels, f.tokens.shape[-1],
                                       0 if f.pooled is None else f.pooled.shape[-1], x_input=True, memory=True,
                                       **SMALL, **kw))


def test_fresh_memory_model_is_reuse_where_a_slow_step_was_seen_and_cond_only_elsewhere():
    m = _model()
    rc, x, d = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    ctx = m.prepare(PromptFeatures(torch.randn(1, 5, 8)), None)
    mem = GuidanceMemory(d, torch.tensor([4.0, 2.0, 1.0]), torch.tensor([True, False, True]))
    ru = m.predict_uncond(rc, torch.tensor([2.0, 1.0, 0.5]), ctx, x, mem)
    assert torch.allclose(ru[[0, 2]], rc[[0, 2]] - d[[0, 2]], atol=1e-5)  # r̂_u = r_c − D: the reuse fill-in
    assert torch.equal(ru[1], rc[1])  # no slow step yet: the conditional output (cfg 1)
    with pytest.raises(ValueError, match="x_t input"):
        arch.make_config("small", 4, 8, 0, memory=True)
    # training moves it away from reuse: the remembered σ and the memory input both reach the output
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    a = m.predict_uncond(rc, torch.tensor([2.0, 1.0, 0.5]), ctx, x, mem)
    b = m.predict_uncond(rc, torch.tensor([2.0, 1.0, 0.5]), ctx, x,
                         GuidanceMemory(d, torch.tensor([8.0, 2.0, 3.0]), mem.has))
    assert not torch.allclose(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("family", ["sd15", "sd3"])
def test_fresh_memory_model_samples_exactly_like_the_reuse_fillin(tiny, family):
    """On ComfyUI's sampler: the guider reports every slow step to the model, resets it per run, and on fast steps
    the fresh model adds the last slow step's guidance difference, as the reuse fill-in does."""
    tm = tiny(family)
    latent = torch.randn(2, tm.latent_channels, 16, 16, generator=torch.Generator().manual_seed(3)) * 0.5

    def run(weak, slow, placement="first"):
        (out,) = refine.CoRe2KSampler().sample(tm.patcher, 5, 8, 4.0, "euler", "normal", tm.positive, tm.negative,
                                               {"samples": latent}, 1.0, weak, 1.0, slow, slow_placement=placement)
        return out["samples"]

    m = _model(tm)
    for slow, placement in ((2, "first"), (3, "spread"), (0, "first")):
        ours, reuse = run(m, slow, placement), run(fillins.make(fillins.REUSE), slow, placement)
        assert torch.allclose(ours, reuse, atol=1e-4, rtol=1e-4), (slow, placement)
    # a run starts with no memory: the same call twice gives the same pictures
    assert torch.equal(run(m, 2), run(m, 2))


def test_slow_step_weak_prediction_sees_only_earlier_slow_steps(tiny):
    """With w2s ≠ 1 a slow step mixes the weak prediction in; that prediction must not see the step's own measured
    guidance (it would be CFG itself, and training never shows it that)."""
    tm = tiny("sd15")
    m = _model(tm)
    seen = []
    predict = m.predict

    def spy(raw_cond, sigma, cfg_scale, step, context):
        seen.append(None if m._observed is None else float(m._observed.sigma[0]))
        return predict(raw_cond, sigma, cfg_scale, step, context)

    m.predict = spy
    latent = torch.zeros(1, tm.latent_channels, 16, 16)
    refine.CoRe2KSampler().sample(tm.patcher, 5, 4, 4.0, "euler", "normal", tm.positive, tm.negative,
                                  {"samples": latent}, 1.0, m, 1.5, 2, slow_placement="first")
    assert len(seen) == 4 and seen[0] is None  # step 0 is slow: nothing measured before it
    assert seen[1] is not None and seen[1] > seen[2]  # slow step 1 remembers step 0 (higher σ), not itself
    assert seen[2] == seen[3]  # fast steps 2 and 3 remember slow step 1


def test_training_batches_remember_an_earlier_step_of_the_same_trajectory(tmp_path):
    from comfyui_core2.core2.dataset import DatasetReader, DatasetWriter
    from comfyui_core2.core2.train import MEMORY_NONE, memory_rows

    w = DatasetWriter(tmp_path / "ds", {"family": "sdxl", "prediction": "eps", "latent_channels": 4,
                                        "latent_hw": [4, 4], "base_model_hash": "h"})
    pid = w.add_prompt("p", None, PromptFeatures(torch.randn(1, 3, 8)), None)
    s = 6
    cond, uncond = torch.randn(s, 4, 4, 4), torch.randn(s, 4, 4, 4)
    w.add_trajectory(pid, 1, 0, {"cond": cond.half(), "uncond": uncond.half(), "sigma": torch.linspace(5, 0.5, s),
                                 "cfg": torch.full((s,), 5.0), "step": torch.arange(s), "x": torch.randn(s, 4, 4, 4).half()})
    r = DatasetReader(tmp_path / "ds")
    picks = [(r.items[0], j) for j in range(s)]
    rows = memory_rows(picks * 200, random.Random(0))
    assert all(m < j for m, (_, j) in zip(rows, picks * 200))  # only earlier steps, or none (−1)
    assert rows[0] == -1 and abs(rows.count(-1) / len(rows) - (MEMORY_NONE * 5 / 6 + 1 / 6)) < 0.05
    b = r.collate(picks, [-1, 0, 0, 1, 3, 2])
    assert b["mem_has"].tolist() == [False, True, True, True, True, True]
    assert torch.equal(b["mem_delta"][0], torch.zeros(4, 4, 4))
    assert torch.allclose(b["mem_delta"][4], cond[3].half().float() - uncond[3].half().float())
    assert torch.allclose(b["mem_sigma"][4], torch.linspace(5, 0.5, s)[3])


def test_trained_memory_model_learns_and_its_file_keeps_the_memory(tmp_path):
    from testkit import collect_helpers, tiny_models

    from comfyui_core2.core2.train import TrainSettings, train
    from comfyui_core2.core2.weights_io import load_weak_model

    folder = collect_helpers.collect(tiny_models.build_sdxl(), tmp_path / "ds", n_prompts=6, seeds=(1,), batch=2,
                                     steps=6, cfg=5.0, store_x=True)
    out = tmp_path / "weak.safetensors"
    res = train(folder, out, TrainSettings(steps=60, batch_size=8, lr=1e-3, size="small", seed=0, val_fraction=0.34,
                                           eval_every=30, checkpoint_every=1000, arch_overrides=SMALL, memory=True))
    assert res.model.memory and res.metrics["rows"] > 0
    weak = load_weak_model(out)
    assert weak.memory and weak.config["memory"] is True
    assert set(res.model.state_dict()) == set(weak.state_dict())
    # not a copy of reuse any more
    assert any(float(p.abs().max()) > 0 for n, p in weak.named_parameters() if n.startswith("head"))
