"""CoRe² Apply: a MODEL patch that makes ComfyUI's own sampler nodes run CoRe²."""
import logging

import pytest
import torch

import comfy.samplers
from comfyui_core2.core2 import fillins
from comfyui_core2.core2.weak import IdentityWeakModel
from comfyui_core2.nodes import apply as apply_mod
from comfyui_core2.nodes import refine
from test_refine import AffineWeak


def test_refused_on_older_cores_with_the_version_needed(tiny_sd15, monkeypatch):
    old = bool(apply_mod.missing_hooks())
    if not old:  # a core with the hooks: take them away
        monkeypatch.setattr(apply_mod, "_pe", None)
    with pytest.raises(RuntimeError, match=r"needs ComfyUI 0\.3\.52 \(August 2025\) or newer.*model wrappers.*CoRe² KSampler"):
        apply_mod.CoRe2Apply().apply(tiny_sd15.patcher, AffineWeak(), 1.5, 3)
    if old:
        with pytest.raises(RuntimeError, match="notcomfy 0.1.0 lacks"):
            apply_mod.check_supported()


def _ksampler(model, tm, latent, seed=5, steps=6, cfg=5.0, sampler="dpmpp_2m", scheduler="karras", denoise=1.0):
    import nodes

    (out,) = nodes.KSampler().sample(model, seed, steps, cfg, sampler, scheduler, tm.positive, tm.negative,
                                     {"samples": latent}, denoise)
    return out["samples"]


def _core2_ksampler(tm, latent, weak, w2s, slow, seed=5, steps=6, cfg=5.0, sampler="dpmpp_2m", scheduler="karras"):
    (out,) = refine.CoRe2KSampler().sample(tm.patcher, seed, steps, cfg, sampler, scheduler, tm.positive, tm.negative,
                                           {"samples": latent}, 1.0, weak, w2s, slow)
    return out["samples"]


def _patched(tm, weak, w2s, slow):
    (m,) = apply_mod.CoRe2Apply().apply(tm.patcher, weak, w2s, slow)
    return m


@pytest.mark.full_comfy
@pytest.mark.parametrize("sampler,scheduler", [("dpmpp_2m", "karras"), ("heun", "normal"), ("euler_ancestral", "simple")])
def test_all_slow_w1_ksampler_equals_plain_ksampler_bit_for_bit(tiny_sd15, sampler, scheduler):
    tm = tiny_sd15
    latent = tm.empty_latent(2)
    ref = _ksampler(tm.patcher, tm, latent, sampler=sampler, scheduler=scheduler)
    got = _ksampler(_patched(tm, AffineWeak(), 1.0, 6), tm, latent, sampler=sampler, scheduler=scheduler)
    assert torch.equal(got, ref)


@pytest.mark.full_comfy
def test_all_slow_w1_flow_model_and_partial_denoise_bit_for_bit(tiny_sd3):
    tm = tiny_sd3
    latent = torch.randn(1, tm.latent_channels, 16, 16, generator=torch.Generator().manual_seed(3))
    ref = _ksampler(tm.patcher, tm, latent, sampler="euler", scheduler="simple", denoise=0.7)
    got = _ksampler(_patched(tm, AffineWeak(), 1.0, 100), tm, latent, sampler="euler", scheduler="simple", denoise=0.7)
    assert torch.equal(got, ref)


@pytest.mark.full_comfy
def test_fast_steps_skip_the_unconditional_pass(tiny_sd15, caplog):
    tm = tiny_sd15
    latent = tm.empty_latent(1)
    m = _patched(tm, IdentityWeakModel(), 1.5, 5)
    tm.reset_calls()
    with caplog.at_level(logging.INFO, logger="comfyui-core2"):
        _ksampler(m, tm, latent, steps=20, sampler="euler", scheduler="normal")
    assert tm.calls == [2] * 5 + [1] * 15  # cond + uncond batched on slow steps, cond alone on fast ones
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("CoRe² (core):")][-1]
    assert "20 steps (5 slow, 15 fast)" in line and "25 model passes vs 40 for CFG" in line


@pytest.mark.full_comfy
@pytest.mark.parametrize("weak_name", ["affine", fillins.REUSE])
def test_ksampler_on_the_patched_model_equals_the_core2_ksampler(tiny_sd15, weak_name):
    tm = tiny_sd15
    latent = tm.empty_latent(2)
    make = AffineWeak if weak_name == "affine" else (lambda: fillins.make(weak_name))
    ref = _core2_ksampler(tm, latent, make(), 1.5, 2, sampler="heun", scheduler="normal")
    got = _ksampler(_patched(tm, make(), 1.5, 2), tm, latent, sampler="heun", scheduler="normal")
    assert torch.equal(got, ref)
    plain = _ksampler(tm.patcher, tm, latent, sampler="heun", scheduler="normal")
    assert (got - plain).abs().max() > 1e-3  # CoRe² really ran


@pytest.mark.full_comfy
def test_sampler_custom_advanced_with_cfg_guider_equals_the_core2_guider(tiny_sd3):
    from comfy_extras import nodes_custom_sampler as ncs
    from testkit.builtin_nodes import run_node

    tm = tiny_sd3
    latent = {"samples": tm.empty_latent(1)}
    (sampler,) = run_node(ncs.KSamplerSelect, sampler_name="euler")
    (sigmas,) = run_node(ncs.BasicScheduler, model=tm.patcher, scheduler="simple", steps=8, denoise=1.0)
    (noise,) = run_node(ncs.RandomNoise, noise_seed=7)

    def run(guider):
        return run_node(ncs.SamplerCustomAdvanced, noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                        latent_image=latent)[0]["samples"]

    (ref_guider,) = refine.CoRe2GuiderNode().get_guider(tm.patcher, tm.positive, tm.negative, 4.0, AffineWeak(), 2.0, 3)
    (cfg_guider,) = run_node(ncs.CFGGuider, model=_patched(tm, AffineWeak(), 2.0, 3), positive=tm.positive,
                             negative=tm.negative, cfg=4.0)
    tm.reset_calls()
    got = run(cfg_guider)
    assert tm.calls == [2] * 3 + [1] * 5
    assert torch.equal(got, run(ref_guider))


@pytest.mark.full_comfy
def test_guiders_with_their_own_guidance_or_no_negative_sample_unchanged_with_a_warning(tiny_sd15, caplog):
    from comfy_extras import nodes_custom_sampler as ncs
    from testkit.builtin_nodes import run_node

    tm = tiny_sd15
    latent = {"samples": tm.empty_latent(1)}
    (sampler,) = run_node(ncs.KSamplerSelect, sampler_name="euler")
    (sigmas,) = run_node(ncs.BasicScheduler, model=tm.patcher, scheduler="normal", steps=4, denoise=1.0)
    (noise,) = run_node(ncs.RandomNoise, noise_seed=1)
    guiders = {"basic": lambda m: run_node(ncs.BasicGuider, model=m, conditioning=tm.positive)[0],
               "dual": lambda m: run_node(ncs.DualCFGGuider, model=m, cond1=tm.positive, cond2=tm.negative,
                                          negative=tm.negative, cfg_conds=5.0, cfg_cond2_negative=2.0,
                                          style="regular")[0]}
    for name, make in guiders.items():
        outs = [run_node(ncs.SamplerCustomAdvanced, noise=noise, guider=make(m), sampler=sampler, sigmas=sigmas,
                         latent_image=latent)[0]["samples"] for m in (tm.patcher, _patched(tm, AffineWeak(), 1.5, 0))]
        assert torch.equal(outs[0], outs[1]), name
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "has no negative conditioning" in messages and "computes its own guidance" in messages


@pytest.mark.skipif(bool(apply_mod.missing_hooks()), reason="this core lacks the hooks (the refusal is tested)")
def test_the_input_model_is_not_changed_and_settings_are_checked(tiny_sd15):
    tm = tiny_sd15
    m = _patched(tm, AffineWeak(), 1.5, 3)
    assert m is not tm.patcher
    assert apply_mod.KEY not in str(tm.patcher.wrappers) and apply_mod.KEY in str(m.wrappers)
    with pytest.raises(ValueError, match="slow_steps"):
        _patched(tm, AffineWeak(), 1.5, -1)


@pytest.mark.full_comfy
def test_a_weak_model_for_another_family_fails_before_sampling(tiny_sd15):
    class Sd3Weak(AffineWeak):
        family, latent_channels, prediction = "sd3", 16, "flow"

    tm = tiny_sd15
    tm.reset_calls()
    with pytest.raises(ValueError, match="does not fit this MODEL"):
        _ksampler(_patched(tm, Sd3Weak(), 1.5, 3), tm, tm.empty_latent(1))
    assert tm.calls == []


@pytest.mark.full_comfy
def test_the_weak_model_is_loaded_with_the_model_by_comfyui(tiny_sd15):
    from comfyui_core2.nodes import weak_memory
    from test_refine import ParamWeak

    tm = tiny_sd15
    weak = ParamWeak()
    _ksampler(_patched(tm, weak, 1.5, 1), tm, tm.empty_latent(1), steps=3, sampler="euler", scheduler="normal")
    wp = weak_memory.weak_patcher(weak, tm.patcher)
    assert weak.loaded_during_sampling and all(wp in loaded for loaded in weak.loaded_during_sampling)


@pytest.mark.full_comfy
def test_predict_noise_wrappers_added_later_are_named_in_a_warning(tiny_sd15, caplog):
    import comfy.patcher_extension as pe

    tm = tiny_sd15
    seen = []

    def my_cache_wrapper(executor, *args, **kwargs):
        seen.append(1)
        return executor(*args, **kwargs)

    before = tm.patcher.clone()
    before.add_wrapper_with_key(pe.WrappersMP.PREDICT_NOISE, "mine", my_cache_wrapper)
    _ksampler(apply_mod.apply(before, AffineWeak(), 1.5, 1), tm, tm.empty_latent(1), steps=3, sampler="euler")
    assert len(seen) == 3 and not any("not run on CoRe² steps" in r.getMessage() for r in caplog.records)
    seen.clear()
    after = _patched(tm, AffineWeak(), 1.5, 1)
    after.add_wrapper_with_key(pe.WrappersMP.PREDICT_NOISE, "mine", my_cache_wrapper)
    _ksampler(after, tm, tm.empty_latent(1), steps=3, sampler="euler")
    assert seen == [] and any("not run on CoRe² steps: my_cache_wrapper" in r.getMessage() for r in caplog.records)


@pytest.mark.full_comfy
def test_the_core2_ksampler_on_a_patched_model_keeps_its_own_settings(tiny_sd15, caplog):
    tm = tiny_sd15
    latent = tm.empty_latent(1)
    (ref,) = refine.CoRe2KSampler().sample(tm.patcher, 1, 4, 5.0, "euler", "normal", tm.positive, tm.negative,
                                           {"samples": latent}, 1.0, AffineWeak(), 2.0, 1)
    (got,) = refine.CoRe2KSampler().sample(_patched(tm, IdentityWeakModel(), 1.0, 4), 1, 4, 5.0, "euler", "normal",
                                           tm.positive, tm.negative, {"samples": latent}, 1.0, AffineWeak(), 2.0, 1)
    assert torch.equal(got["samples"], ref["samples"])
    assert any("CoRe2CFGGuider computes its own guidance" in r.getMessage() for r in caplog.records)


@pytest.mark.full_comfy
def test_apply_spreads_its_slow_steps_when_asked(tiny_sd15):
    tm = tiny_sd15
    latent = tm.empty_latent(1)
    (m,) = apply_mod.CoRe2Apply().apply(tm.patcher, IdentityWeakModel(), 1.5, 4, slow_placement="spread")
    tm.reset_calls()
    _ksampler(m, tm, latent, steps=20, sampler="euler", scheduler="normal")
    assert tm.calls == [2 if i % 5 == 0 else 1 for i in range(20)]
    with pytest.raises(ValueError, match="placement"):
        apply_mod.CoRe2Apply().apply(tm.patcher, IdentityWeakModel(), 1.5, 4, slow_placement="middle")
