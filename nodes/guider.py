"""CoRe2CFGGuider: ComfyUI's CFGGuider with CoRe² slow and fast steps (the GUIDER of the "CoRe2Guider" node).

Built on ComfyUI's own sampling path so other patches keep working (LoRA, ControlNet, area/mask conds, pre/post-cfg
functions, calc-cond-batch replacements):

* slow step: cond + uncond through calc_cond_batch, the pre-cfg functions, ComfyUI's cfg_function (including a
  sampler_cfg_function such as RescaleCFG) = the "strong" prediction; then weak-to-strong
  out = weak + w·(strong − weak); then the post-cfg functions;
* fast step: cond only (1 pass), out = weak; then the post-cfg functions, which see the unconditional prediction
  implied by the weak model, u = (g·c − weak)/(g − 1). Pre-cfg functions and a sampler_cfg_function get that u too
  (then out = cfg_function(their cond, their u), which is weak when they change nothing); at cfg 1 they are skipped.
The weak model always sees the model's own conditional prediction (before any pre-cfg function).

Which step an evaluation belongs to is counted by the sampler's own progress (core2/schedule.py StepTracker).
What one sampling run keeps (its step map and tracker, counts, the weak model's prompt contexts) lives in a RunState
made in __init__ and reset at the start of every run, as ComfyUI's EasyCache holder is.

Methods (docs/method.md §5): "core" as above; "z-core" and "z-sampling" run the Euler zigzag loop of core2/zigzag.py,
where every denoise is full CFG (as in the official code) and the inversion is, for z-core, one conditional pass
extrapolated through the weak model, cond + w·(weak − cond), and for z-sampling, CFG at inv_cfg (2 passes).
"""
from __future__ import annotations

import logging
import math
import sys
import time

import comfy.samplers
import torch

from ..core2 import guidance
from ..core2.schedule import RunStats, StepMap, StepTracker, check_placement, resolve_placement
from ..core2.weak import StepInfo, WeakModel
from ..core2.zigzag import INVERT_KEY, sample_zigzag_euler
from . import conditioning, model_info, weak_memory
from .feedback import NodeText

log = logging.getLogger("comfyui-core2")
METHODS = ("core", "z-core", "z-sampling")


def _evaluate(model, conds, x, timestep, model_options) -> list:
    """ComfyUI's batch evaluation, honouring a sampler_calc_cond_batch_function (2025+): the model's own predictions."""
    if "sampler_calc_cond_batch_function" in model_options:
        args = {"conds": conds, "input": x, "sigma": timestep, "model": model, "model_options": model_options}
        return list(model_options["sampler_calc_cond_batch_function"](args))
    return list(comfy.samplers.calc_cond_batch(model, conds, x, timestep, model_options))


def _pre_cfg(model, conds, out, cond_scale, x, timestep, model_options) -> list:
    """ComfyUI's pre-cfg functions on [cond, uncond] predictions (a copy of the list: they may assign into it)."""
    out = list(out)
    for fn in model_options.get("sampler_pre_cfg_function", []):
        args = {"conds": conds, "conds_out": out, "cond_scale": cond_scale, "timestep": timestep,
                "input": x, "sigma": timestep, "model": model, "model_options": model_options}
        out = fn(args)
    return out


def _post_cfg(model, denoised, cond_pred, uncond_pred, cond, uncond, cond_scale, x, timestep, model_options):
    for fn in model_options.get("sampler_post_cfg_function", []):
        args = {"denoised": denoised, "cond": cond, "uncond": uncond, "cond_scale": cond_scale, "model": model,
                "uncond_denoised": uncond_pred, "cond_denoised": cond_pred, "sigma": timestep,
                "model_options": model_options, "input": x}
        denoised = fn(args)
    return denoised


def records_guidance(model_options: dict) -> bool:
    """Whether a CoRe² Collect recorder is attached (a post-cfg function marked core2_session, nodes/collect.py): then
    fast steps run the unconditional pass too, for the dataset only, so the weak model learns the states its own
    fast steps lead to (the "steered" collection of CoRe² Collect Batch). The picture still follows the fast step."""
    return any(getattr(f, "core2_session", None) is not None
               for f in model_options.get("sampler_post_cfg_function", None) or ())


class RunState:
    """The per-run state of a CoRe2CFGGuider: the step map and tracker of the run's schedule, the run's counts, and
    the weak model's prompt context per (batch, device, dtype). Made once with the guider; reset() starts a run."""

    def __init__(self):
        self.map: StepMap | None = None
        self.steps: StepTracker | None = None
        self.stats = RunStats()
        self.contexts: dict = {}

    def reset(self, step_map: StepMap) -> None:
        self.map = step_map
        self.steps = StepTracker(step_map)
        self.stats = RunStats()
        self.contexts = {}


class CoRe2CFGGuider(comfy.samplers.CFGGuider):
    def __init__(self, model_patcher, weak: WeakModel | None, w2s_scale: float = 1.5, slow_steps: int | None = None,
                 schedule: torch.Tensor | None = None, method: str = "core", zigzag_steps: int | None = None,
                 inv_cfg: float = 0.5, denoise: float = 1.0, slow_placement: str = "auto"):
        """slow_steps: how many schedule steps run slow (None: all); slow_placement: which ones (core2/schedule.py:
        "first", "spread", "front", or "auto", resolved per run for the weak model). schedule: the full σ schedule the
        steps are counted in (KSamplerAdvanced windows); default: the σ list handed to sample(). method: one of
        METHODS; zigzag_steps: how many of the first steps zigzag (None: all but the last); inv_cfg: the CFG scale of
        the z-sampling inversion. denoise: KSampler's denoise, < 1 when the schedule is the tail of a longer one (the weak
        model is told, StepInfo.denoise)."""
        super().__init__(model_patcher)
        if method not in METHODS:
            raise ValueError(f"CoRe²: unknown method {method!r}; use one of {', '.join(METHODS)}.")
        if weak is None and method != "z-sampling":
            raise ValueError(f"CoRe²: method {method!r} needs a weak model; connect one (only z-sampling runs without).")
        self.weak = weak
        self.w2s_scale = float(w2s_scale)
        self.slow_steps = slow_steps
        self.slow_placement = check_placement(slow_placement)  # an unknown placement fails here, before any work
        self.schedule = schedule
        self.method = method
        self.zigzag_steps = zigzag_steps
        self.inv_cfg = float(inv_cfg)
        self.denoise = float(denoise)
        self.scheduler_name: str | None = None  # set by the KSampler nodes, for the weak model's setting warnings
        self.report_runs = True  # the per-run summary line (log and node); off where a caller reports (Collect Batch)
        self.run_state = RunState()

    @property
    def stats(self) -> RunStats:
        """The counts of the current (or last) sampling run."""
        return self.run_state.stats

    # --- checks before any work -------------------------------------------------------------------------------
    def validate(self, total_steps: int) -> int:
        """Raise before any work on settings that cannot run; return how many steps run slow."""
        mp = self.model_patcher
        if self.weak is not None:
            self.weak.check_compatible(model_info.family(mp), model_info.latent_channels(mp), model_info.prediction(mp))
        if self.method != "core":
            if not conditioning.has_negative(self.original_conds.get("negative")):
                raise ValueError(f"CoRe²: {self.method} runs full CFG on every denoise and needs a negative conditioning.")
            return total_steps
        slow = self.slow_steps_for(total_steps)
        if slow > 0 and not conditioning.has_negative(self.original_conds.get("negative")):
            raise ValueError("CoRe²: slow steps need a negative conditioning (they run full CFG). Connect a negative "
                             "prompt, or set slow_steps to 0 to run every step fast.")
        return slow

    def slow_steps_for(self, total_steps: int) -> int:
        """slow_steps in a schedule of total_steps steps: None is all; more than there are is clamped (and logged),
        as KSamplerAdvanced clamps its step windows, so a 4-step Turbo/Lightning run with the default 10 just runs
        all slow."""
        if self.slow_steps is None:
            return total_steps
        if self.slow_steps < 0:
            raise ValueError(f"CoRe²: slow_steps is {self.slow_steps}; use 0 (all fast) or more.")
        if self.slow_steps > total_steps:
            log.info("CoRe²: slow_steps %d is more than the %d steps of the schedule: all %d run slow.",
                     self.slow_steps, total_steps, total_steps)
            return total_steps
        return self.slow_steps

    # --- sampling ----------------------------------------------------------------------------------------------
    def sample(self, noise, latent_image, sampler, sigmas, *args, **kwargs):
        if torch.as_tensor(sigmas).numel() < 2:  # nothing to sample (denoise 0): what CFGGuider does, no checks
            return super().sample(noise, latent_image, sampler, sigmas, *args, **kwargs)
        sampler = self.begin_run(sigmas, sampler, stop_frame=sys._getframe())
        args, kwargs = self.with_step_callback(args, kwargs)
        t0 = time.perf_counter()
        own = self.model_patcher
        self.model_patcher = weak_memory.attach(own, self.weak)  # ComfyUI loads and counts the weak model too
        try:
            return super().sample(noise, latent_image, sampler, sigmas, *args, **kwargs)
        finally:
            self.model_patcher = own
            self.end_run(time.perf_counter() - t0)

    def begin_run(self, sigmas, sampler=None, stop_frame=None):
        """Check the settings and start one run's state (step map and tracker, counts, prompt contexts); return the
        sampler to run (the zigzag loop for the zigzag methods). stop_frame: the frame that calls the sampler (the
        step tracker searches no further up). Also used by CoRe² Apply (nodes/apply.py) on another guider's run."""
        schedule = self.schedule if self.schedule is not None else sigmas
        total = int(torch.as_tensor(schedule).numel()) - 1
        slow = self.validate(total)
        if self.weak is not None:
            for w in self.weak.setting_warnings(self.cfg, total, self.scheduler_name):
                log.warning("CoRe²: %s", w)
            if hasattr(self.weak, "prompt_notes"):
                for note in self.weak.prompt_notes(conditioning.features(self.original_conds.get("positive")),
                                                   conditioning.features(self.original_conds.get("negative"))):
                    log.info("CoRe²: %s", note)
        if self.method != "core":
            sampler = self._zigzag_sampler(sampler)
        run = self.run_state
        run.reset(StepMap(schedule, slow, placement=resolve_placement(self.slow_placement, self.weak)))
        run.steps.start(sigmas, stop_frame=stop_frame)
        if hasattr(self.weak, "reset"):  # the reuse fill-in and memory models keep per-run state
            self.weak.reset()
        return sampler

    def end_run(self, seconds: float) -> None:
        """Log the run's summary line, show it on the sampler node running this guider, drop its prompt contexts."""
        run = self.run_state
        if run.stats.evaluations and self.report_runs:
            self.last_summary = run.stats.summary(seconds, self.weak.name if self.weak else "none", self.method,
                                                  run.map.placement if run.map is not None else "")
            log.info(self.last_summary)
            NodeText().show(self.last_summary, final=True)
        run.contexts = {}

    def with_step_callback(self, args, kwargs, index: int = 1):
        """sample()'s arguments after sigmas (CFGGuider.sample(..., denoise_mask, callback, ...): the callback is
        args[index]) with the callback wrapped so the step tracker sees the sampler's per-step callbacks; one is
        passed even where the caller passed none."""
        args = list(args)
        user = args[index] if len(args) > index else kwargs.get("callback")
        tracker = self.run_state.steps

        def callback(*a, **k):
            tracker.on_callback()
            if user is not None:
                return user(*a, **k)

        if len(args) > index:
            args[index] = callback
        else:
            kwargs["callback"] = callback
        return tuple(args), kwargs

    def _zigzag_sampler(self, sampler):
        """Replace an Euler SAMPLER by the zigzag loop; other samplers have no defined inversion here."""
        fn = getattr(sampler, "sampler_function", None)
        if getattr(fn, "__name__", "") != "sample_euler" or getattr(sampler, "extra_options", {}).get("s_churn", 0):
            name = getattr(fn, "__name__", type(sampler).__name__).replace("sample_", "")
            raise ValueError(f"CoRe²: {self.method} is defined for the euler sampler (first order, deterministic); "
                             f"got '{name}'. Choose sampler 'euler', or method 'core'.")
        from functools import partial

        return comfy.samplers.KSAMPLER(partial(sample_zigzag_euler, zigzag_steps=self.zigzag_steps),
                                       inpaint_options=getattr(sampler, "inpaint_options", {}))

    def _weak_context(self, batch: int, device, dtype):
        """The weak model's prompt context, once per run. Features go in as float32 (at least): the weak model casts
        them itself, after anything precision-sensitive (the official nets' SVD)."""
        key = (batch, str(device), dtype)
        contexts = self.run_state.contexts
        if key not in contexts:
            def prep(f):
                if f is None:
                    return None
                return f.expand(batch).to(device, torch.promote_types(f.tokens.dtype, torch.float32))
            pos = prep(conditioning.features(self.original_conds.get("positive")))
            neg = prep(conditioning.features(self.original_conds.get("negative")))
            contexts[key] = self.weak.prepare(pos, neg)
        return contexts[key]

    def _weak_denoised(self, x, timestep, cond_pred, step: int):
        param = next(self.weak.parameters(), None)
        device = x.device
        dtype = param.dtype if param is not None else x.dtype
        if param is not None and param.device != device:
            self.weak.to(device)
        raw_c = guidance.raw_from_denoised(x, cond_pred, timestep)
        step_map = self.run_state.map
        info = StepInfo(step, step_map.total, step_map.schedule, {"x": x, "guider": self}, self.denoise)
        ctx = self._weak_context(x.shape[0], device, dtype)
        sigma = timestep.to(device=device, dtype=dtype).flatten()
        raw = self.weak(raw_c.to(dtype), sigma, float(self.cfg), info, ctx).to(x.dtype)
        return guidance.denoised_from_raw(x, raw, timestep)

    def _invert(self, x, timestep, step, model_options):
        """The zigzag inversion prediction (x0 space)."""
        model = self.inner_model
        cond = self.conds.get("positive", None)
        if self.method == "z-sampling":
            self.stats.record(step, "invert", 1 if math.isclose(self.inv_cfg, 1.0) else 2, False)
            return comfy.samplers.sampling_function(model, x, timestep, self.conds.get("negative", None), cond,
                                                    self.inv_cfg, model_options=model_options)
        cond_pred = _evaluate(model, [cond, None], x, timestep, model_options)[0]
        self.stats.record(step, "invert", 1, True)
        weak = self._weak_denoised(x, timestep, cond_pred, step)
        # Z-CoRe²'s inversion (docs/method.md §5): from the conditional prediction past the weak model's, cond + w·(weak
        # − cond); the weak model is the target here, not the starting point of weak-to-strong guidance
        return guidance.extrapolate(cond_pred, weak, self.w2s_scale)

    def _fast(self, model, x, timestep, step, cond, uncond, model_options, cond_pred=None):
        """A fast step: (cond, uncond, denoised) from one conditional pass and the weak model. The weak model sees the
        model's own conditional prediction. Where pre-cfg functions or a sampler_cfg_function (RescaleCFG, APG, …)
        are attached, they get the unconditional prediction the weak model implies, u = (g·c − weak)/(g − 1), in place
        of the pass not run, so fast steps look to them like CFG steps; at cfg 1 there is no u and they are skipped.
        model_options: without the post-cfg functions (run by predict_noise). cond_pred: the conditional prediction
        when it was already computed (a recorded fast step)."""
        if cond_pred is None:
            cond_pred = _evaluate(model, [cond, None], x, timestep, model_options)[0]
        weak = self._weak_denoised(x, timestep, cond_pred, step)
        uncond_pred = guidance.implied_uncond(cond_pred, weak, self.cfg)
        patched = model_options.get("sampler_pre_cfg_function") or "sampler_cfg_function" in model_options
        if not patched or math.isclose(self.cfg, 1.0):
            return cond_pred, uncond_pred, weak
        cond_pred, uncond_pred = _pre_cfg(model, [cond, uncond], [cond_pred, uncond_pred], self.cfg, x, timestep,
                                          model_options)[:2]
        denoised = comfy.samplers.cfg_function(model, cond_pred, uncond_pred, self.cfg, x, timestep,
                                               model_options=model_options, cond=cond, uncond=uncond)
        return cond_pred, uncond_pred, denoised

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        step = self.run_state.steps.step(timestep)
        if model_options.get(INVERT_KEY):
            return self._invert(x, timestep, step, model_options)
        slow = self.run_state.map.is_slow(step)
        model = self.inner_model
        cond = self.conds.get("positive", None)
        uncond = self.conds.get("negative", None)
        cfg = self.cfg
        no_post = {k: v for k, v in model_options.items() if k != "sampler_post_cfg_function"}
        if slow:
            if math.isclose(cfg, 1.0) and not model_options.get("disable_cfg1_optimization", False):
                uncond = None  # ComfyUI's cfg = 1 shortcut
            raw = _evaluate(model, [cond, uncond], x, timestep, model_options)
            use_weak = self.w2s_scale != 1.0 and self.method == "core"
            # the weak prediction first: it knows the earlier slow steps only, as on a fast step
            weak = self._weak_denoised(x, timestep, raw[0], step) if use_weak else None
            if uncond is not None and getattr(self.weak, "remembers_guidance", False):  # reuse fill-in, memory models
                self.weak.observe_slow(guidance.raw_from_denoised(x, raw[0], timestep),
                                       guidance.raw_from_denoised(x, raw[1], timestep), timestep, step)
            cond_pred, uncond_pred = _pre_cfg(model, [cond, uncond], raw, cfg, x, timestep, model_options)[:2]
            strong = comfy.samplers.cfg_function(model, cond_pred, uncond_pred, cfg, x, timestep,
                                                 model_options=no_post, cond=cond, uncond=uncond)
            denoised = guidance.weak_to_strong(weak, strong, self.w2s_scale) if use_weak else strong
        elif uncond is not None and not math.isclose(cfg, 1.0) and records_guidance(model_options):
            use_weak = True  # a steered collection: the image follows the fast step, CoRe² Collect records both passes
            cond_pred, uncond_pred = _evaluate(model, [cond, uncond], x, timestep, model_options)[:2]
            denoised = self._fast(model, x, timestep, step, cond, uncond, no_post, cond_pred=cond_pred)[2]
            self.stats.recorded_fast += 1
        else:
            use_weak = True
            cond_pred, uncond_pred, denoised = self._fast(model, x, timestep, step, cond, uncond, no_post)
            uncond = None
        passes = 1 if uncond is None else 2
        self.stats.record(step, "slow" if slow else "fast", passes, use_weak)
        return _post_cfg(model, denoised, cond_pred, uncond_pred, cond, uncond, cfg, x, timestep, model_options)
