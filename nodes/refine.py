"""Refine: the CoRe² sampler nodes (KSampler, KSampler Advanced, Guider)."""
from __future__ import annotations

import comfy.samplers

from ..core2.schedule import PLACEMENTS
from .guider import METHODS, CoRe2CFGGuider
from .inputs import ADVANCED, with_tooltip
from .sampling import run_ksampler

WEAK = "CORE2_WEAK_MODEL"
CATEGORY = "CoRe²/sampling"


def _core2_inputs(slow_default=10):
    return {
        "weak_model": (WEAK, {"tooltip": "From CoRe² Load Weak Model or CoRe² Reflect."}),
        "w2s_scale": ("FLOAT", {"default": 1.5, "min": 0.0, "max": 10.0, "step": 0.05, "round": 0.01,
                                 "tooltip": "Weak-to-strong scale w on slow steps: out = weak + w·(cfg − weak). 1 = plain "
                                            "CFG; 1.5 is the official default, 2.5 the official demo's."}),
        "slow_steps": ("INT", {"default": slow_default, "min": 0, "max": 10000,
                               "tooltip": "How many of the first steps run slow (cond + uncond, 2 model passes). The rest "
                                          "run fast (cond only + weak model, 1 pass). 0 = fastest; = steps: best quality."}),
        "method": (list(METHODS), {"default": "core", "tooltip":
                   "core: CoRe² slow/fast steps. z-core: Z-CoRe², zigzag sampling whose inversion is one conditional "
                   "pass through the weak model (euler only). z-sampling: plain Z-Sampling, the baseline (euler only; "
                   "the weak model is not used). Zigzag methods run full CFG on every denoise and ignore slow_steps."}),
        "zigzag_steps": ("INT", {"default": -1, "min": -1, "max": 10000, **ADVANCED, "tooltip":
                         "z-core / z-sampling only (ignored by core): how many of the first steps zigzag; -1 = all but "
                         "the last."}),
    }


OPTIONAL = {"optional": {"inv_cfg": ("FLOAT", {"default": 0.5, "min": -10.0, "max": 10.0, "step": 0.1, **ADVANCED,
                                               "tooltip": "z-sampling only (ignored by core and z-core): CFG scale of "
                                                          "the inversion pass (official default 0.5)."}),
                           "slow_placement": (list(PLACEMENTS), {"default": "auto", "tooltip":
                               "Which steps run slow. first: the first slow_steps steps (official CoRe²). spread: "
                               "slow_steps steps evenly spaced from the first, so fast steps never run far from a "
                               "measured CFG step. front: half of them first, the rest spread over the later steps. "
                               "auto: front for weak models that build on the last slow step's guidance (Reflect's "
                               "guidance memory, the 'reuse' fill-in), first for the others."})}}


def _ksampler_inputs(names: list, specs: dict) -> dict:
    """KSampler's inputs, in KSampler's order, with KSampler's tooltips."""
    return {n: with_tooltip(specs[n], n) for n in names}


def _specs() -> dict:
    """The KSampler inputs' types and options (ComfyUI's), tooltips added by _ksampler_inputs."""
    seed = ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "control_after_generate": True})
    return {"model": ("MODEL",), "seed": seed, "noise_seed": seed,
            "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
            "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
            "sampler_name": (comfy.samplers.KSampler.SAMPLERS,), "scheduler": (comfy.samplers.KSampler.SCHEDULERS,),
            "positive": ("CONDITIONING",), "negative": ("CONDITIONING",), "latent_image": ("LATENT",),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01})}


_SPECS = _specs()


def _guider(model, weak_model, w2s_scale, slow_steps, method, zigzag_steps, inv_cfg, schedule=None, scheduler=None,
            denoise=1.0, slow_placement="auto"):
    g = CoRe2CFGGuider(model, weak_model, w2s_scale, slow_steps, schedule=schedule, method=method,
                       zigzag_steps=None if zigzag_steps < 0 else zigzag_steps, inv_cfg=inv_cfg, denoise=denoise,
                       slow_placement=slow_placement)
    g.scheduler_name = scheduler
    return g


def _factory(steps, scheduler, weak_model, w2s_scale, slow_steps, method, zigzag_steps, inv_cfg, denoise=1.0,
             slow_placement="auto"):
    """make(model, schedule) -> guider for run_ksampler. slow_steps is checked against the schedule the sampler
    really runs (a scheduler may give fewer or more σ than `steps`), by the guider."""
    return lambda m, schedule: _guider(m, weak_model, w2s_scale, slow_steps, method, zigzag_steps, inv_cfg, schedule,
                                       scheduler, denoise, slow_placement)


class CoRe2KSampler:
    DESCRIPTION = ("KSampler with CoRe² weak-to-strong guidance: the first `slow_steps` steps run full CFG sharpened "
                   "by the weak model, the rest run one model pass with the weak model standing in for CFG.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            **_ksampler_inputs(["model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative",
                                "latent_image", "denoise"], _SPECS),
            **_core2_inputs(),
        }, **OPTIONAL}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"
    CATEGORY = CATEGORY

    def sample(self, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise,
               weak_model, w2s_scale, slow_steps, method="core", zigzag_steps=-1, inv_cfg=0.5, slow_placement="auto"):
        make = _factory(steps, scheduler, weak_model, w2s_scale, slow_steps, method, zigzag_steps, inv_cfg, denoise,
                        slow_placement)
        return (run_ksampler(make, model, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                             latent_image, denoise=denoise),)


class CoRe2KSamplerAdvanced:
    DESCRIPTION = ("KSampler (Advanced) with CoRe². slow_steps counts from the first step of the whole schedule, so "
                   "two chained samplers agree on which steps are slow.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": with_tooltip(("MODEL",), "model"),
            "add_noise": (["enable", "disable"],),
            **_ksampler_inputs(["noise_seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative",
                                "latent_image"], _SPECS),
            "start_at_step": ("INT", {"default": 0, "min": 0, "max": 10000}),
            "end_at_step": ("INT", {"default": 10000, "min": 0, "max": 10000}),
            "return_with_leftover_noise": (["disable", "enable"],),
            **_core2_inputs(),
        }, **OPTIONAL}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"
    CATEGORY = CATEGORY

    def sample(self, model, add_noise, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative,
               latent_image, start_at_step, end_at_step, return_with_leftover_noise, weak_model, w2s_scale, slow_steps,
               method="core", zigzag_steps=-1, inv_cfg=0.5, slow_placement="auto"):
        make = _factory(steps, scheduler, weak_model, w2s_scale, slow_steps, method, zigzag_steps, inv_cfg,
                        slow_placement=slow_placement)
        return (run_ksampler(make, model, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative,
                             latent_image, disable_noise=add_noise == "disable", start_step=start_at_step,
                             last_step=end_at_step, force_full_denoise=return_with_leftover_noise != "enable"),)


class CoRe2GuiderNode:
    DESCRIPTION = ("A CoRe² GUIDER for SamplerCustomAdvanced: works with any SAMPLER and SIGMAS. slow_steps counts "
                   "steps of the SIGMAS it is given.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            **_ksampler_inputs(["model", "positive", "negative", "cfg"], _SPECS),
            **_core2_inputs(),
        }, **OPTIONAL}

    RETURN_TYPES = ("GUIDER",)
    FUNCTION = "get_guider"
    CATEGORY = CATEGORY

    def get_guider(self, model, positive, negative, cfg, weak_model, w2s_scale, slow_steps, method="core",
                   zigzag_steps=-1, inv_cfg=0.5, slow_placement="auto"):
        guider = _guider(model, weak_model, w2s_scale, slow_steps, method, zigzag_steps, inv_cfg,
                         slow_placement=slow_placement)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        return (guider,)


# node id -> class; the ids are what saved workflows name, so they never change ("CoRe2Guider" is the node that makes
# a guider.CoRe2CFGGuider)
NODE_CLASS_MAPPINGS = {
    "CoRe2KSampler": CoRe2KSampler,
    "CoRe2KSamplerAdvanced": CoRe2KSamplerAdvanced,
    "CoRe2Guider": CoRe2GuiderNode,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "CoRe2KSampler": "CoRe² KSampler",
    "CoRe2KSamplerAdvanced": "CoRe² KSampler (Advanced)",
    "CoRe2Guider": "CoRe² Guider",
}
