"""Training-free fill-ins (core2/fillins.py): cond only and reuse, on ComfyUI's sampling path, and the loader entries."""
import logging

import pytest
import torch

import comfy.sample
from comfyui_core2.core2 import fillins
from comfyui_core2.nodes import refine
from comfyui_core2.nodes.reflect import CoRe2LoadWeakModel


def _latent(tm):
    return torch.randn(2, tm.latent_channels, 16, 16, generator=torch.Generator().manual_seed(3)) * 0.5


def _plain(tm, latent, steps, cfg):
    noise = comfy.sample.prepare_noise(latent, 5)
    return comfy.sample.sample(tm.patcher, noise, steps, cfg, "euler", "normal", tm.positive, tm.negative, latent,
                               disable_pbar=True, seed=5)


def _core2(tm, latent, steps, cfg, weak, slow, w=1.0):
    (out,) = refine.CoRe2KSampler().sample(tm.patcher, 5, steps, cfg, "euler", "normal", tm.positive, tm.negative,
                                           {"samples": latent}, 1.0, weak, w, slow)
    return out["samples"]


def test_reuse_adds_the_last_slow_guidance_difference():
    f = fillins.ReuseFill()
    c, u = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    sigma = torch.ones(2)
    assert torch.equal(f.predict(c, sigma, 5.0, None, None), c)  # before any slow step: cond only
    f.observe_slow(c, u, sigma, 0)
    c2 = torch.randn(2, 4, 8, 8)
    assert torch.allclose(f.predict(c2, sigma, 5.0, None, None), c2 + 4.0 * (c - u))
    f.reset()
    assert torch.equal(f.predict(c2, sigma, 5.0, None, None), c2)


@pytest.mark.parametrize("family", ["sd15", "sd3"])
def test_fillins_are_exact_where_they_should_be(tiny, family):
    tm = tiny(family)
    latent = _latent(tm)
    cfg_run = _plain(tm, latent, 6, 4.0)
    for name in fillins.FILLINS:  # all slow, w2s 1: ComfyUI's CFG, whatever the fill-in
        assert torch.equal(_core2(tm, latent, 6, 4.0, fillins.make(name), 6), cfg_run), name
    # all fast: nothing observed, both are "cond only", i.e. the guided prediction is the conditional one
    a = _core2(tm, latent, 6, 4.0, fillins.make(fillins.COND_ONLY), 0)
    b = _core2(tm, latent, 6, 4.0, fillins.make(fillins.REUSE), 0)
    assert torch.equal(a, b)
    assert torch.allclose(a, _plain(tm, latent, 6, 1.0), atol=1e-5)


def test_reuse_differs_from_cond_only_after_a_slow_step(tiny, caplog):
    """(Whether reuse is *better* is a quality question for the benchmark on the toy worlds, not for a random net.)"""
    tm = tiny("sd15")
    latent = _latent(tm)
    with caplog.at_level(logging.INFO, logger="comfyui-core2"):
        reuse = _core2(tm, latent, 8, 4.0, fillins.make(fillins.REUSE), 2)
    cond_only = _core2(tm, latent, 8, 4.0, fillins.make(fillins.COND_ONLY), 2)
    assert not torch.allclose(reuse, cond_only)
    assert "reuse last guidance" in caplog.text  # the run's summary line names the fill-in


def test_loader_offers_the_fillins_without_a_file(comfy_folders):
    names = CoRe2LoadWeakModel.INPUT_TYPES()["required"]["weak_model_name"][0]
    assert fillins.COND_ONLY in names and fillins.REUSE in names
    weak, info = CoRe2LoadWeakModel().load(fillins.REUSE)
    assert isinstance(weak, fillins.ReuseFill) and "no file" in info
    assert CoRe2LoadWeakModel.IS_CHANGED(fillins.REUSE) == fillins.REUSE  # cached, not NaN (always rerun)
    with pytest.raises(ValueError, match="no training-free fill-in"):
        fillins.make("magic")
