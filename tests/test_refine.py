"""Refine: CoRe² sampler nodes on ComfyUI's own sampling path (tiny models, real ComfyUI code)."""
import logging

import pytest
import torch

import comfy.sample
import comfy.samplers
from comfyui_core2.core2 import fillins, guidance
from comfyui_core2.core2.schedule import StepMap
from comfyui_core2.core2.weak import IdentityWeakModel, WeakModel
from comfyui_core2.nodes import refine
from comfyui_core2.nodes.guider import CoRe2CFGGuider
from testkit.builtin_nodes import run_node


class AffineWeak(WeakModel):
    """A deterministic non-trivial weak model: pushes r_c away from itself by a σ-dependent amount."""

    name = "affine test weak"

    def predict(self, raw_cond, sigma, cfg_scale, step, context):
        return raw_cond * 1.3 + 0.05 * sigma.view(-1, 1, 1, 1).clamp(max=1.0)


class OracleWeak(WeakModel):
    """Returns the true CFG raw output by evaluating the unconditional pass itself (test-only)."""

    name = "oracle"

    def predict(self, raw_cond, sigma, cfg_scale, step, context):
        guider = step.extra["guider"]
        x = step.extra["x"]
        sig = sigma.to(x.dtype)
        uncond_x0 = comfy.samplers.calc_cond_batch(guider.inner_model, [guider.conds["negative"]], x, sig,
                                                   guider.model_options)[0]
        raw_u = guidance.raw_from_denoised(x, uncond_x0, sig)
        return guidance.cfg(raw_cond, raw_u, cfg_scale)


def reference(tm, latent, seed, steps, cfg, sampler, scheduler, denoise=1.0, model=None):
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model or tm.patcher, noise, steps, cfg, sampler, scheduler, tm.positive, tm.negative,
                               latent, denoise=denoise, disable_pbar=True, seed=seed)


def core2(tm, latent, seed, steps, cfg, sampler, scheduler, weak, w, slow, denoise=1.0, model=None, negative=None):
    node = refine.CoRe2KSampler()
    (out,) = node.sample(model or tm.patcher, seed, steps, cfg, sampler, scheduler, tm.positive,
                         tm.negative if negative is None else negative, {"samples": latent}, denoise, weak, w, slow)
    return out["samples"]


@pytest.mark.parametrize("family", ["sd15", "sd3"])
@pytest.mark.parametrize("scheduler", ["normal", "karras"])
@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "dpmpp_2m", "heun"])
def test_all_slow_w1_equals_comfy_ksampler(tiny, family, sampler, scheduler):
    tm = tiny(family)
    latent = torch.randn(2, tm.latent_channels, 16, 16, generator=torch.Generator().manual_seed(1)) * 0.5
    ref = reference(tm, latent, 11, 6, 4.5, sampler, scheduler, denoise=0.6)
    got = core2(tm, latent, 11, 6, 4.5, sampler, scheduler, AffineWeak(), 1.0, 6, denoise=0.6)
    assert (got - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_all_slow_w1_other_families(tiny, family):
    tm = tiny(family)
    latent = tm.empty_latent(2)
    ref = reference(tm, latent, 3, 5, 5.0, "euler", "normal")
    got = core2(tm, latent, 3, 5, 5.0, "euler", "normal", AffineWeak(), 1.0, 5)
    assert (got - ref).abs().max() <= 1e-5


def test_w2s_changes_slow_steps(tiny_sd15):
    tm = tiny_sd15
    latent = tm.empty_latent(1)
    ref = reference(tm, latent, 5, 5, 5.0, "euler", "normal")
    got = core2(tm, latent, 5, 5, 5.0, "euler", "normal", AffineWeak(), 1.5, 5)
    assert (got - ref).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["sd15", "sd3"])
def test_all_fast_with_oracle_equals_cfg(tiny, family):
    tm = tiny(family)
    latent = tm.empty_latent(2)
    ref = reference(tm, latent, 9, 6, 5.0, "dpmpp_2m", "karras")
    got = core2(tm, latent, 9, 6, 5.0, "dpmpp_2m", "karras", OracleWeak(), 1.5, 0)
    # cond and uncond run as two forwards here (one batched forward in CFG): float32 round-off only
    assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_cost_20_steps_5_slow_is_25_passes(tiny_sd15, caplog):
    tm = tiny_sd15
    latent = tm.empty_latent(1)
    with caplog.at_level(logging.INFO, logger="comfyui-core2"):
        core2(tm, latent, 0, 20, 6.0, "euler", "normal", IdentityWeakModel(), 1.5, 5)
    assert tm.calls == [2] * 5 + [1] * 15
    assert tm.samples_evaluated == 25
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("CoRe² (core):")][-1]
    assert "20 steps (5 slow, 15 fast)" in line and "25 model passes vs 40 for CFG" in line


def test_heun_counts_by_noise_level(tiny_sd15):
    tm = tiny_sd15
    latent = tm.empty_latent(1)
    g = CoRe2CFGGuider(tm.patcher, IdentityWeakModel(), 1.5, slow_steps=3)
    g.set_conds(tm.positive, tm.negative)
    g.set_cfg(5.0)
    sigmas = comfy.samplers.calculate_sigmas(tm.patcher.get_model_object("model_sampling"), "normal", 6)
    noise = comfy.sample.prepare_noise(latent, 0)
    g.sample(noise, latent, comfy.samplers.sampler_object("heun"), sigmas, disable_pbar=True, seed=0)
    # heun: 2 evaluations per step except the last; the second one sits on the next step's noise level
    assert g.stats.slow_evals + g.stats.fast_evals == 11
    assert g.stats.slow_steps == {0, 1, 2} and g.stats.fast_steps == {3, 4, 5}
    assert sum(tm.calls) == g.stats.model_passes


def test_run_state_is_made_once_and_reset_per_run(tiny_sd15):
    """The guider's per-run state (step map, tracker, counts, prompt contexts) exists before any run, starts afresh
    for each run, and lets go of the weak model's prompt contexts when the run ends."""
    tm = tiny_sd15
    g = CoRe2CFGGuider(tm.patcher, IdentityWeakModel(), 1.5, slow_steps=2)
    state = g.run_state
    assert g.stats.evaluations == 0 and state.map is None
    g.set_conds(tm.positive, tm.negative)
    g.set_cfg(5.0)
    latent = tm.empty_latent(1)
    euler = comfy.samplers.sampler_object("euler")
    for n in (4, 6):
        sigmas = comfy.samplers.calculate_sigmas(tm.patcher.get_model_object("model_sampling"), "normal", n)
        g.sample(comfy.sample.prepare_noise(latent, 0), latent, euler, sigmas, disable_pbar=True, seed=0)
        assert g.run_state is state and state.map.total == n and state.contexts == {}
        assert g.stats.slow_steps == {0, 1} and g.stats.fast_steps == set(range(2, n))  # this run's counts only
        assert g.stats.evaluations == n


def _guided_run(tm, sampler, sigmas, slow, weak=None, seed=0, callback=None):
    g = CoRe2CFGGuider(tm.patcher, weak or IdentityWeakModel(), 1.5, slow_steps=slow)
    g.set_conds(tm.positive, tm.negative)
    g.set_cfg(5.0)
    latent = tm.empty_latent(1)
    noise = comfy.sample.prepare_noise(latent, seed)
    tm.reset_calls()
    out = g.sample(noise, latent, sampler, sigmas, callback=callback, disable_pbar=True, seed=seed)
    return g, out


# evaluations per step (n steps) of each sampler: the first one, then the sampler's extra ones
STEP_EVALS = {
    "heun": lambda n: [2] * (n - 1) + [1],  # the second evaluation sits at σ_{i+1}, where step i+1 starts
    "dpm_2_ancestral": lambda n: [2] * (n - 1) + [1],
    "dpmpp_2s_ancestral": lambda n: [2] * (n - 1) + [1],
    "heunpp2": lambda n: [3] * (n - 2) + [2, 1],  # looks ahead to σ_{i+2}
    "dpm_2": lambda n: [2] * (n - 1) + [1],
    "euler_churn": lambda n: [1] * n,  # σ raised above σ_i
    "dpmpp_sde": lambda n: [2] * (n - 1) + [1],
}


def _sampler(name):
    if name == "euler_churn":
        return comfy.samplers.ksampler("euler", {"s_churn": 10.0})
    return comfy.samplers.sampler_object(name)


@pytest.mark.parametrize("scheduler", ["normal", "karras"])
@pytest.mark.parametrize("name", list(STEP_EVALS))
@pytest.mark.parametrize("slow", [1, 3, 5])
def test_every_evaluation_of_a_step_runs_in_its_mode(tiny_sd15, name, slow, scheduler):
    """Each evaluation of step i runs slow (one batch-2 call: cond + uncond) iff i < slow_steps, whatever σ it is at."""
    tm = tiny_sd15
    n = 6
    sigmas = comfy.samplers.calculate_sigmas(tm.patcher.get_model_object("model_sampling"), scheduler, n)
    g, _ = _guided_run(tm, _sampler(name), sigmas, slow)
    expected = [2 if i < slow else 1 for i, k in enumerate(STEP_EVALS[name](n)) for _ in range(k)]
    assert tm.calls == expected
    assert g.stats.slow_steps == set(range(slow)) and g.stats.fast_steps == set(range(slow, n))
    assert g.stats.slow_evals == sum(STEP_EVALS[name](n)[:slow])


def test_heunpp2_and_flow_models_too(tiny_sd3):
    """A flow model (CONST): dpmpp_2s_ancestral runs its RF variant; every evaluation of a step in its mode."""
    tm = tiny_sd3
    sigmas = comfy.samplers.calculate_sigmas(tm.patcher.get_model_object("model_sampling"), "simple", 5)
    for name in ("dpmpp_2s_ancestral", "heunpp2", "heun"):
        _guided_run(tm, _sampler(name), sigmas, 2)
        assert tm.calls == [2 if i < 2 else 1 for i, k in enumerate(STEP_EVALS[name](5)) for _ in range(k)], name


def test_advanced_window_counts_from_the_schedule_with_heun(tiny_sd15):
    tm = tiny_sd15
    latent = tm.empty_latent(1)
    adv = refine.CoRe2KSamplerAdvanced()
    tm.reset_calls()
    adv.sample(tm.patcher, "enable", 8, 8, 5.0, "heun", "normal", tm.positive, tm.negative,
               {"samples": latent}, 2, 6, "enable", AffineWeak(), 1.5, 4)
    assert tm.calls == [2] * 4 + [1] * 4  # steps 2, 3 slow; 4, 5 fast; 2 evaluations each


def test_dpm_adaptive_each_attempted_step_runs_in_one_mode(tiny_sd15):
    """dpm_adaptive takes steps of its own: each attempted step (between two of its callbacks) runs in one mode, the
    mode of the schedule step its starting σ falls in; before the first callback, σ decides."""
    tm = tiny_sd15
    n, slow = 8, 3
    sigmas = comfy.samplers.calculate_sigmas(tm.patcher.get_model_object("model_sampling"), "karras", n)
    marks = []
    g, out = _guided_run(tm, _sampler("dpm_adaptive"), sigmas, slow,
                         callback=lambda *a: marks.append(len(tm.calls)))
    assert torch.isfinite(out).all() and len(marks) > 3
    segments = [tm.calls[a:b] for a, b in zip([0] + marks, marks + [len(tm.calls)]) if b > a]
    assert all(len(set(seg)) == 1 for seg in segments[1:]), segments
    modes = [seg[0] for seg in segments]
    assert modes[0] == 2 and modes[-1] == 1
    assert modes == sorted(modes, reverse=True)  # slow attempts first, then fast ones: one switch
    assert g.stats.slow_evals + g.stats.fast_evals == len(tm.calls)


class SigmaLog(WeakModel):
    name = "σ log"

    def __init__(self):
        super().__init__()
        self.seen = []

    def predict(self, raw_cond, sigma, cfg_scale, step, context):
        self.seen.append((step.index, float(sigma.flatten()[0])))
        return raw_cond


@pytest.mark.parametrize("name", ["uni_pc", "dpm_fast"])
def test_samplers_calling_back_after_a_steps_first_evaluation_count_by_sigma(tiny_sd15, name):
    """uni_pc and dpm_fast have no loop over the schedule and call back right after a step's first evaluation: σ
    decides (exact for uni_pc, which evaluates only at schedule σ)."""
    tm = tiny_sd15
    sigmas = comfy.samplers.calculate_sigmas(tm.patcher.get_model_object("model_sampling"), "normal", 6)
    weak = SigmaLog()
    g, _ = _guided_run(tm, _sampler(name), sigmas, 3, weak=weak)
    m = StepMap(sigmas, 3)
    assert g.run_state.steps.source == "sigma" and weak.seen
    assert [i for i, _ in weak.seen] == [m.index(s) for _, s in weak.seen]
    if name == "uni_pc":
        assert tm.calls == [2, 2, 2, 1, 1, 1]


def test_sampler_without_callbacks_falls_back_to_sigma(tiny_sd15):
    """A sampler that neither loops over `sigmas` with `i` nor calls back: steps by σ (StepMap.index)."""
    from comfyui_core2.core2.zigzag import euler_step, to_d

    def plain_euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
        s_in = x.new_ones([x.shape[0]])
        for k in range(len(sigmas) - 1):
            den = model(x, sigmas[k] * s_in, **(extra_args or {}))
            x = euler_step(x, to_d(x, sigmas[k], den), sigmas[k], sigmas[k + 1])
        return x

    tm = tiny_sd15
    sigmas = comfy.samplers.calculate_sigmas(tm.patcher.get_model_object("model_sampling"), "normal", 5)
    g, _ = _guided_run(tm, comfy.samplers.KSAMPLER(plain_euler), sigmas, 2)
    assert tm.calls == [2, 2, 1, 1, 1] and g.run_state.steps.source == "sigma"


def test_denoise_zero_returns_the_latent_like_ksampler(tiny_sd15):
    tm = tiny_sd15
    latent = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    ref = reference(tm, latent, 1, 6, 5.0, "euler", "normal", denoise=0.0)
    got = core2(tm, latent, 1, 6, 5.0, "euler", "normal", AffineWeak(), 1.5, 3, denoise=0.0)
    assert torch.equal(got, latent) and torch.equal(got, ref) and tm.calls == []


def test_slow_steps_beyond_the_schedule_are_clamped_and_logged(tiny_sd15, caplog):
    tm = tiny_sd15
    latent = tm.empty_latent(1)
    with caplog.at_level(logging.INFO, logger="comfyui-core2"):
        many = core2(tm, latent, 0, 4, 5.0, "euler", "normal", AffineWeak(), 1.5, 10)  # a Turbo setup at the default
    assert tm.calls == [2] * 4
    assert any("slow_steps 10 is more than the 4 steps" in r.getMessage() for r in caplog.records)
    assert torch.equal(many, core2(tm, latent, 0, 4, 5.0, "euler", "normal", AffineWeak(), 1.5, 4))


def test_slow_steps_checked_against_the_real_schedule(tiny_sd15):
    """A scheduler may return fewer σ than steps (beta drops repeated timesteps): slow_steps = steps still runs."""
    tm = tiny_sd15
    ms = tm.patcher.get_model_object("model_sampling")
    steps = next(n for n in range(20, 200) if len(comfy.samplers.calculate_sigmas(ms, "beta", n)) - 1 != n)
    real = len(comfy.samplers.calculate_sigmas(ms, "beta", steps)) - 1
    tm.reset_calls()
    core2(tm, tm.empty_latent(1, 8, 8), 0, steps, 5.0, "euler", "beta", IdentityWeakModel(), 1.5, steps)
    assert tm.calls == [2] * real and real < steps


def test_step_map():
    m = StepMap(torch.tensor([10.0, 5.0, 2.0, 1.0, 0.0]), slow_steps=2)
    assert [m.index(s) for s in (10.0, 11.0, 7.0, 5.0, 5.0000001, 4.99, 2.0, 0.5)] == [0, 0, 0, 1, 1, 1, 2, 3]
    assert m.is_slow(1) and not m.is_slow(2)


def test_builtin_post_cfg_function_still_applies(tiny_sd15):
    """PerturbedAttentionGuidance (a built-in post-cfg node) changes CoRe² output exactly as it changes KSampler's."""
    from comfy_extras.nodes_pag import PerturbedAttentionGuidance

    tm = tiny_sd15
    (pag,) = run_node(PerturbedAttentionGuidance, model=tm.patcher, scale=2.0)
    latent = tm.empty_latent(1)
    plain = reference(tm, latent, 4, 5, 5.0, "euler", "normal")
    ref = reference(tm, latent, 4, 5, 5.0, "euler", "normal", model=pag)
    got = core2(tm, latent, 4, 5, 5.0, "euler", "normal", AffineWeak(), 1.0, 5, model=pag)
    assert (ref - plain).abs().max() > 1e-3
    assert (got - ref).abs().max() <= 1e-5
    # and on fast steps too: the PAG pass runs (one extra cond pass per evaluation)
    tm.reset_calls()
    fast = core2(tm, latent, 4, 5, 5.0, "euler", "normal", AffineWeak(), 1.5, 0, model=pag)
    assert len(tm.calls) == 10
    assert (fast - core2(tm, latent, 4, 5, 5.0, "euler", "normal", AffineWeak(), 1.5, 0)).abs().max() > 1e-3


def test_advanced_chain_equals_single_run(tiny_sd15):
    tm = tiny_sd15
    latent = tm.empty_latent(1)
    weak = AffineWeak()
    single = core2(tm, latent, 8, 10, 5.0, "euler", "normal", weak, 1.5, 4)
    tm.reset_calls()
    adv = refine.CoRe2KSamplerAdvanced()
    (a,) = adv.sample(tm.patcher, "enable", 8, 10, 5.0, "euler", "normal", tm.positive, tm.negative,
                      {"samples": latent}, 0, 6, "enable", weak, 1.5, 4)
    (b,) = adv.sample(tm.patcher, "disable", 8, 10, 5.0, "euler", "normal", tm.positive, tm.negative,
                      a, 6, 10000, "disable", weak, 1.5, 4)
    assert tm.calls[-10:] == [2] * 4 + [1] * 6  # slow/fast counted on the whole schedule across the chain
    # the chain leaves and re-enters the latent space (process_latent_out/in): float32 round-off only
    assert (b["samples"] - single).abs().max() <= 1e-6 * single.abs().max()


def test_guider_with_custom_sampler_and_sigmas(tiny_sd3):
    tm = tiny_sd3
    latent = tm.empty_latent(1)
    (guider,) = refine.CoRe2GuiderNode().get_guider(tm.patcher, tm.positive, tm.negative, 4.0, AffineWeak(), 1.0, 6)
    sigmas = comfy.samplers.calculate_sigmas(tm.patcher.get_model_object("model_sampling"), "beta", 6)
    noise = comfy.sample.prepare_noise(latent, 2)
    got = guider.sample(noise, latent, comfy.samplers.sampler_object("dpmpp_2m"), sigmas, disable_pbar=True, seed=2)
    ref = comfy.sample.sample_custom(tm.patcher, noise, 4.0, comfy.samplers.sampler_object("dpmpp_2m"), sigmas,
                                     tm.positive, tm.negative, latent, disable_pbar=True, seed=2)
    assert (got - ref).abs().max() <= 1e-5


def test_errors_before_sampling(tiny_sd15, tiny_sd3):
    tm = tiny_sd15
    latent = tm.empty_latent(1)

    class SD3Weak(AffineWeak):
        family, latent_channels, prediction, name = "sd3", 16, "flow", "sd3 weak"

    with pytest.raises(ValueError, match="built for sd3 models, but the MODEL is sd15"):
        core2(tm, latent, 0, 4, 5.0, "euler", "normal", SD3Weak(), 1.5, 2)
    with pytest.raises(ValueError, match="need a negative conditioning"):
        core2(tm, latent, 0, 4, 5.0, "euler", "normal", AffineWeak(), 1.5, 2, negative=[])
    assert tm.calls == []  # nothing ran
    # all fast needs no negative
    out = core2(tm, latent, 0, 4, 5.0, "euler", "normal", AffineWeak(), 1.5, 0, negative=[])
    assert torch.isfinite(out).all()


@pytest.mark.full_comfy
def test_equals_nodes_ksampler_in_full_comfyui(tiny_sd15):
    import nodes

    tm = tiny_sd15
    latent = {"samples": tm.empty_latent(2)}
    (ref,) = nodes.KSampler().sample(tm.patcher, 5, 6, 5.0, "dpmpp_2m", "karras", tm.positive, tm.negative, latent, 1.0)
    (got,) = refine.CoRe2KSampler().sample(tm.patcher, 5, 6, 5.0, "dpmpp_2m", "karras", tm.positive, tm.negative,
                                           latent, 1.0, AffineWeak(), 1.0, 6)
    assert (got["samples"] - ref["samples"]).abs().max() <= 1e-5


class ParamWeak(AffineWeak):
    """AffineWeak with a weight, so there is something for ComfyUI's model management to load."""

    name = "param test weak"

    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(1.3))
        self.loaded_during_sampling = []

    def predict(self, raw_cond, sigma, cfg_scale, step, context):
        import comfy.model_management as mm

        self.loaded_during_sampling.append([lm.model for lm in mm.current_loaded_models])
        return raw_cond * self.gain + 0.05 * sigma.view(-1, 1, 1, 1).clamp(max=1.0)


def test_weak_model_handed_to_comfy_model_management_when_supported(tiny_sd15):
    from comfyui_core2.nodes import weak_memory

    tm = tiny_sd15
    weak = ParamWeak()
    assert weak_memory.attach(tm.patcher, IdentityWeakModel()) is tm.patcher  # no weights: nothing to manage
    latent = tm.empty_latent(1)
    out = core2(tm, latent, 0, 4, 5.0, "euler", "normal", weak, 1.5, 1)
    assert torch.isfinite(out).all() and weak.loaded_during_sampling
    same = core2(tm, latent, 0, 4, 5.0, "euler", "normal", AffineWeak(), 1.5, 1)
    assert torch.equal(out, same)  # the same weak output whether or not ComfyUI manages it
    if not weak_memory.supported(tm.patcher):  # older ComfyUI (notcomfy): no additional-models hook, sampler moves it
        assert weak_memory.attach(tm.patcher, weak) is tm.patcher
        return
    wp = weak_memory.weak_patcher(weak, tm.patcher)
    assert wp is weak_memory.weak_patcher(weak, tm.patcher)  # cached: one patcher per weak model and device pair
    assert all(wp in loaded for loaded in weak.loaded_during_sampling)  # loaded with the base model, every step
    assert wp.model_size() >= 4 and wp.model.weak is weak
    assert weak_memory.KEY not in tm.patcher.additional_models  # the user's MODEL is not changed
    attached = weak_memory.attach(tm.patcher, weak)
    assert attached is not tm.patcher and attached.get_additional_models_with_key(weak_memory.KEY) == [wp]


class InputLog(AffineWeak):
    name = "input log"

    def __init__(self):
        super().__init__()
        self.inputs = []
        self.outputs = []

    def predict(self, raw_cond, sigma, cfg_scale, step, context):
        out = super().predict(raw_cond, sigma, cfg_scale, step, context)
        self.inputs.append(raw_cond.clone())
        self.outputs.append(out.clone())
        return out


def _with_pre_cfg(tm, fn):
    m = tm.patcher.clone()
    m.set_model_sampler_pre_cfg_function(fn)
    return m


def test_fast_steps_give_pre_cfg_functions_the_weak_models_uncond(tiny_sd15):
    """Pre-cfg functions on fast steps see [cond, u] with u the uncond the weak model implies (not zeros), so
    CFG of what they see is the weak prediction; the weak model sees the model's own cond prediction."""
    tm = tiny_sd15
    seen = []

    def halve_guidance(args):  # like APG / LatentApplyOperationCFG: reshapes the guidance c − u
        c, u = args["conds_out"][:2]
        seen.append((c.clone(), u.clone(), args["input"], args["sigma"]))
        return [u + (c - u) * 0.5, u]

    latent = tm.empty_latent(1)
    weak_plain, weak_patched = InputLog(), InputLog()
    core2(tm, latent, 2, 4, 5.0, "euler", "normal", weak_plain, 1.5, 0)
    core2(tm, latent, 2, 4, 5.0, "euler", "normal", weak_patched, 1.5, 0, model=_with_pre_cfg(tm, halve_guidance))
    assert len(seen) == 4
    assert torch.equal(weak_plain.inputs[0], weak_patched.inputs[0])  # the same x at step 0: the same weak input
    for (c, u, x, sigma), weak_raw in zip(seen, weak_patched.outputs):
        weak_x0 = guidance.denoised_from_raw(x, weak_raw, sigma)
        assert u.abs().max() > 0.1
        assert (guidance.cfg(c, u, 5.0) - weak_x0).abs().max() <= 1e-4 * weak_x0.abs().max()


def test_fast_steps_with_a_pre_cfg_function_that_changes_nothing_equal_plain_fast_steps(tiny_sd15):
    tm = tiny_sd15
    latent = tm.empty_latent(1)
    plain = core2(tm, latent, 2, 5, 5.0, "euler", "normal", AffineWeak(), 1.5, 2)
    same = core2(tm, latent, 2, 5, 5.0, "euler", "normal", AffineWeak(), 1.5, 2,
                 model=_with_pre_cfg(tm, lambda args: args["conds_out"]))
    assert (same - plain).abs().max() <= 1e-5 * plain.abs().max()


def test_slow_step_placements():
    from comfyui_core2.core2.schedule import slow_step_set

    assert slow_step_set(20, 4, "first") == {0, 1, 2, 3}
    assert slow_step_set(20, 4, "spread") == {0, 5, 10, 15}
    assert slow_step_set(10, 3, "spread") == {0, 3, 6}
    assert slow_step_set(6, 9, "spread") == slow_step_set(6, 9, "first") == set(range(6))
    assert slow_step_set(6, 0, "spread") == frozenset()
    assert slow_step_set(20, 4, "front") == {0, 1, 2, 11}  # half first, the rest spread over the later steps
    assert slow_step_set(16, 4, "front") == {0, 1, 2, 9} and slow_step_set(12, 8, "front") == {0, 1, 2, 3, 4, 6, 8, 10}
    assert slow_step_set(8, 1, "front") == {0} and slow_step_set(8, 2, "front") == {0, 1}
    assert slow_step_set(6, 9, "front") == set(range(6)) and slow_step_set(6, 0, "front") == frozenset()
    for total in range(1, 30):  # always k distinct steps, step 0 among them
        for k in range(1, total + 1):
            got = slow_step_set(total, k, "front")
            assert len(got) == k and 0 in got and max(got) < total, (total, k)
    with pytest.raises(ValueError, match="auto, first, spread, front"):
        slow_step_set(6, 2, "last")
    with pytest.raises(ValueError, match="resolve"):
        slow_step_set(6, 2, "auto")


def test_auto_placement_fronts_only_for_weak_models_that_build_on_the_last_slow_step():
    from comfyui_core2.core2 import arch, fillins
    from comfyui_core2.core2.schedule import resolve_placement

    memory = arch.build(arch.make_config("small", 4, 8, 0, x_input=True, memory=True, width=8, emb_dim=16))
    plain = arch.build(arch.make_config("small", 4, 8, 0, x_input=True, width=8, emb_dim=16))
    assert resolve_placement("auto", memory) == resolve_placement("auto", fillins.make(fillins.REUSE)) == "front"
    assert resolve_placement("auto", plain) == resolve_placement("auto", IdentityWeakModel()) == "first"
    assert resolve_placement("auto", fillins.make(fillins.COND_ONLY)) == "first"
    assert resolve_placement("first", memory) == "first" and resolve_placement("spread", plain) == "spread"


def test_spread_placement_runs_its_slow_steps_where_it_says(tiny_sd15, caplog):
    """20 steps, 4 slow, spread: steps 0, 5, 10, 15 take cond + uncond, the others one pass; the log counts the same
    passes as the first-k placement; an unknown placement is refused before sampling."""
    tm = tiny_sd15
    latent = tm.empty_latent(1)
    node = refine.CoRe2KSampler()
    tm.reset_calls()
    with caplog.at_level(logging.INFO, logger="comfyui-core2"):
        node.sample(tm.patcher, 0, 20, 6.0, "euler", "normal", tm.positive, tm.negative, {"samples": latent}, 1.0,
                    IdentityWeakModel(), 1.5, 4, slow_placement="spread")
    assert tm.calls == [2 if i % 5 == 0 else 1 for i in range(20)]
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("CoRe² (core):")][-1]
    assert "20 steps (4 slow (spread: steps 0, 5, 10, 15), 16 fast)" in line and "24 model passes vs 40 for CFG" in line
    # auto (the node's default) fronts for the reuse fill-in, keeps the first steps slow for a plain weak model
    for weak, calls in ((fillins.make(fillins.REUSE), [2 if i in (0, 1, 2, 11) else 1 for i in range(20)]),
                        (IdentityWeakModel(), [2] * 4 + [1] * 16)):
        tm.reset_calls()
        node.sample(tm.patcher, 0, 20, 6.0, "euler", "normal", tm.positive, tm.negative, {"samples": latent}, 1.0,
                    weak, 1.0, 4)
        assert tm.calls == calls, weak.name
    tm.reset_calls()
    with pytest.raises(ValueError, match="placement"):
        node.sample(tm.patcher, 0, 20, 6.0, "euler", "normal", tm.positive, tm.negative, {"samples": latent}, 1.0,
                    IdentityWeakModel(), 1.5, 4, slow_placement="middle")
    assert tm.calls == []


@pytest.mark.parametrize("placement", ["first", "spread", "front"])
def test_all_slow_w1_equals_cfg_whatever_the_placement(tiny_sd15, placement):
    tm = tiny_sd15
    latent = tm.empty_latent(1)
    ref = reference(tm, latent, 3, 8, 5.0, "euler", "normal")
    node = refine.CoRe2KSampler()
    (out,) = node.sample(tm.patcher, 3, 8, 5.0, "euler", "normal", tm.positive, tm.negative, {"samples": latent}, 1.0,
                         IdentityWeakModel(), 1.0, 8, slow_placement=placement)
    assert torch.equal(out["samples"], ref)
