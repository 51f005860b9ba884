"""CoRe² Apply: a MODEL → MODEL patch that makes any sampler node run CoRe²'s slow and fast steps.

Like ComfyUI's own guidance patches (PAG, APG, CFGZero*) it returns a clone of the MODEL; KSampler, KSampler
(Advanced), SamplerCustomAdvanced with CFGGuider, and the detailers and upscalers built on them then sample with
CoRe². Two model wrappers do it (comfy.patcher_extension, ComfyUI 0.3.52 and newer):

* OUTER_SAMPLE, around each sampling run of a guider: starts a CoRe² run for it, a CoRe2CFGGuider (nodes/guider.py) that
  holds the settings, checks them (begin_run: weak model fits the MODEL, a negative for slow steps), counts steps by
  the sampler's progress and logs the run's summary line; the run's σ list is the schedule its steps are counted in
  (as for the CoRe² Guider node: a KSampler (Advanced) window counts from its own first step);
* PREDICT_NOISE, around each model evaluation: returns that CoRe2CFGGuider's prediction (slow: cond + uncond, CFG,
  weak-to-strong; fast: one conditional pass and the weak model) for the guider's own conds and cfg.

So the method is the CoRe² samplers' own code, not a copy: with w2s_scale 1 and every step slow it is the guider's
plain CFG, bit for bit. Guiders with guidance of their own (a predict_noise other than CFGGuider's: DualCFGGuider,
PerpNeg, the CoRe² samplers themselves) or without a negative (BasicGuider) sample unchanged, with a warning. Other
predict-noise wrappers registered after this one (LazyCache) are not run on CoRe² runs (a warning names them).
"""
from __future__ import annotations

import logging
import sys
import time

import comfy.model_patcher
import comfy.samplers

from . import weak_memory
from .guider import CoRe2CFGGuider
from ..core2.schedule import check_placement
from .refine import OPTIONAL, _core2_inputs

try:  # ComfyUI with model wrappers
    import comfy.patcher_extension as _pe
except ImportError:  # notcomfy / late-2024 ComfyUI
    _pe = None

log = logging.getLogger("comfyui-core2")
KEY = "core2_apply"
NEEDED = "ComfyUI 0.3.52 (August 2025) or newer"
CATEGORY = "CoRe²/sampling"


def running_version() -> str:
    """The running ComfyUI's version, for messages."""
    try:
        import comfyui_version

        return f"ComfyUI {comfyui_version.__version__}"
    except ImportError:
        pass
    try:
        from importlib.metadata import version

        return f"notcomfy {version('notcomfy')}"
    except Exception:  # noqa: BLE001 - only for a message
        return "this ComfyUI (version unknown)"


def missing_hooks(model=None) -> list[str]:
    """What this ComfyUI lacks for CoRe² Apply (empty: nothing)."""
    if _pe is None:
        return ["model wrappers (comfy.patcher_extension)"]
    missing = [f"the {w} wrapper" for w in ("OUTER_SAMPLE", "PREDICT_NOISE") if not hasattr(_pe.WrappersMP, w)]
    if not hasattr(comfy.samplers.CFGGuider, "outer_predict_noise"):
        missing.append("CFGGuider.outer_predict_noise")
    if model is not None and not hasattr(model, "add_wrapper_with_key"):
        missing.append("ModelPatcher.add_wrapper_with_key")
    return missing


def check_supported(model=None) -> None:
    missing = missing_hooks(model)
    if missing:
        raise RuntimeError(f"CoRe² Apply needs {NEEDED}; {running_version()} lacks {', '.join(missing)}. Update "
                           "ComfyUI, or sample with the CoRe² KSampler, CoRe² KSampler (Advanced) or CoRe² Guider "
                           "nodes, which work on this ComfyUI.")


def _own_guidance(guider) -> bool:
    """Whether the guider computes its prediction its own way (not CFGGuider's cond/uncond CFG)."""
    return type(guider).predict_noise is not comfy.samplers.CFGGuider.predict_noise


def _arg(args, kwargs, index: int, name: str):
    return args[index] if len(args) > index else kwargs.get(name)


def _later_predict_wrappers(guider) -> list[str]:
    """PREDICT_NOISE wrappers that come after CoRe² Apply's (skipped on CoRe² runs), by name."""
    fns = _pe.get_all_wrappers(_pe.WrappersMP.PREDICT_NOISE, guider.model_options, is_model_options=True)
    names = [getattr(f, "__name__", type(f).__name__) for f in fns]
    mine = [i for i, f in enumerate(fns) if getattr(f, "core2_apply", False)]
    return names[mine[-1] + 1:] if mine else []


def make_wrappers(weak, w2s_scale: float, slow_steps: int, slow_placement: str = "auto"):
    """The OUTER_SAMPLE and PREDICT_NOISE wrappers of one CoRe² Apply node (module doc)."""

    def core2_apply_outer_sample(executor, *args, **kwargs):
        guider = executor.class_obj
        sigmas = _arg(args, kwargs, 3, "sigmas")
        if _own_guidance(guider):
            log.warning("CoRe² Apply: %s computes its own guidance; CoRe² Apply leaves it unchanged (it acts on "
                        "CFGGuider: KSampler, KSampler (Advanced), SamplerCustomAdvanced with CFGGuider).",
                        type(guider).__name__)
            return executor(*args, **kwargs)
        if "negative" not in guider.original_conds:
            log.warning("CoRe² Apply: %s has no negative conditioning (cond-only sampling, 1 pass per step): nothing "
                        "for CoRe² to speed up; it samples without CoRe².", type(guider).__name__)
            return executor(*args, **kwargs)
        if sigmas is None or sigmas.numel() < 2:
            return executor(*args, **kwargs)
        later = _later_predict_wrappers(guider)
        if later:
            log.warning("CoRe² Apply: predict-noise wrappers added after it are not run on CoRe² steps: %s. Put "
                        "CoRe² Apply last in the MODEL chain.", ", ".join(later))
        core = CoRe2CFGGuider(guider.model_patcher, weak, w2s_scale, slow_steps, slow_placement=slow_placement)
        core.original_conds = guider.original_conds
        core.set_cfg(guider.cfg)
        core.begin_run(sigmas, stop_frame=sys._getframe())
        # outer_sample(noise, latent_image, sampler, sigmas, denoise_mask, callback, ...)
        args, kwargs = core.with_step_callback(args, kwargs, index=5)
        own = guider.model_options
        guider.model_options = comfy.model_patcher.create_model_options_clone(own)  # as EasyCache does
        guider.model_options.setdefault("transformer_options", {})[KEY] = core
        t0 = time.perf_counter()
        try:
            return executor(*args, **kwargs)
        finally:
            guider.model_options = own
            core.end_run(time.perf_counter() - t0)

    def core2_apply_predict_noise(executor, *args, **kwargs):
        guider = executor.class_obj
        core = guider.model_options.get("transformer_options", {}).get(KEY)
        if core is None:
            return executor(*args, **kwargs)
        core.inner_model, core.conds = guider.inner_model, guider.conds
        return core.predict_noise(*args, **kwargs)

    core2_apply_predict_noise.core2_apply = True
    return core2_apply_outer_sample, core2_apply_predict_noise


def apply(model, weak, w2s_scale: float, slow_steps: int, slow_placement: str = "auto"):
    """A clone of `model` that samples with CoRe² (refused, before any work, on a ComfyUI without the hooks)."""
    check_supported(model)
    if weak is None:
        raise ValueError("CoRe² Apply: connect a weak model (CoRe² Load Weak Model; its '(training-free)' entries "
                         "need no file).")
    if slow_steps < 0:
        raise ValueError(f"CoRe² Apply: slow_steps is {slow_steps}; use 0 (all fast) or more.")
    check_placement(slow_placement)  # an unknown placement fails here, before any work
    m = weak_memory.attach(model, weak)  # ComfyUI loads and counts the weak model with the MODEL
    if m is model:
        m = model.clone()
    outer, predict = make_wrappers(weak, w2s_scale, slow_steps, slow_placement)
    m.add_wrapper_with_key(_pe.WrappersMP.OUTER_SAMPLE, KEY, outer)
    m.add_wrapper_with_key(_pe.WrappersMP.PREDICT_NOISE, KEY, predict)
    return m


class CoRe2Apply:
    DESCRIPTION = ("Makes any sampler node (KSampler, KSampler (Advanced), SamplerCustomAdvanced with CFGGuider, "
                   "detailers, upscalers) run CoRe²: the first slow_steps steps of each run go slow (cond + uncond, "
                   "sharpened by the weak model), the rest fast (one conditional pass, the weak model standing in for "
                   f"CFG). Set cfg and the negative prompt on the sampler as usual. Needs {NEEDED}.")

    @classmethod
    def INPUT_TYPES(cls):
        core = _core2_inputs()
        return {"required": {"model": ("MODEL",), "weak_model": core["weak_model"], "w2s_scale": core["w2s_scale"],
                             "slow_steps": (core["slow_steps"][0], {**core["slow_steps"][1], "tooltip":
                                            "How many of the first steps of each sampling run go slow (cond + uncond: "
                                            "2 model passes); the rest run fast (1 pass). Steps are those of the σ list "
                                            "the sampler runs (a KSampler (Advanced) window counts from its own "
                                            "start). 0 = fastest; ≥ steps: all slow (with w2s_scale 1: plain CFG)."})},
                "optional": {"slow_placement": OPTIONAL["optional"]["slow_placement"]}}

    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The MODEL, patched: connect it to any sampler.",)
    FUNCTION = "apply"
    CATEGORY = CATEGORY

    def apply(self, model, weak_model, w2s_scale, slow_steps, slow_placement="auto"):
        return (apply(model, weak_model, w2s_scale, slow_steps, slow_placement),)


NODE_CLASS_MAPPINGS = {"CoRe2Apply": CoRe2Apply}
NODE_DISPLAY_NAME_MAPPINGS = {"CoRe2Apply": "CoRe² Apply (any sampler)"}

__all__ = ["CoRe2Apply", "apply", "check_supported", "missing_hooks", "NEEDED", "KEY"]
