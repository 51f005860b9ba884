"""CoRe² Official Preset: the sampling settings the official weights were trained with, in one node.

MODEL in, MODEL out (SD3.5: with ComfyUI's own ModelSamplingSD3 at shift 3 applied), plus steps, cfg, sampler_name and
scheduler outputs that connect to the widgets of KSampler, the CoRe² samplers or CoRe² Compare. The numbers live in
core2/official/compat.py (OFFICIAL), the same table the official weak model's setting warnings read.
"""
from __future__ import annotations

import comfy.samplers

from ..core2.official.compat import OFFICIAL
from . import model_info

CATEGORY = "CoRe²/sampling"
PRESETS = {o.label: o for o in OFFICIAL.values()}


def shifted(model, shift: float):
    """ComfyUI's ModelSamplingSD3 node (V1 or V3 schema) applied to `model`; where comfy_extras cannot be imported
    (notcomfy has no folder_paths), the same steps as that node."""
    try:
        from comfy_extras.nodes_model_advanced import ModelSamplingSD3
    except ImportError:
        import comfy.model_sampling as ms

        class ModelSamplingAdvanced(ms.ModelSamplingDiscreteFlow, ms.CONST):
            pass

        sampling = ModelSamplingAdvanced(model.model.model_config)
        sampling.set_parameters(shift=shift, multiplier=1000)
        m = model.clone()
        m.add_object_patch("model_sampling", sampling)
        return m
    if hasattr(ModelSamplingSD3, "FUNCTION"):
        return getattr(ModelSamplingSD3(), ModelSamplingSD3.FUNCTION)(model=model, shift=shift)[0]
    return ModelSamplingSD3.execute(model=model, shift=shift).args[0]


def apply_preset(model, label: str):
    """(model, steps, cfg, sampler_name, scheduler, notes) for a preset label; a clear error for a MODEL of another
    family (before any work)."""
    if label not in PRESETS:
        raise ValueError(f"CoRe² Official Preset: unknown preset {label!r}; choose one of: {'; '.join(PRESETS)}.")
    p = PRESETS[label]
    fam = model_info.family(model)
    if fam != p.family:
        other = [q.label.split(":")[0] for q in PRESETS.values() if q.family == fam]
        hint = f" Pick '{other[0]}'." if other else " There is no official preset for it: set the sampler yourself."
        raise ValueError(f"CoRe² Official Preset: '{label.split(':')[0]}' is for {p.family} models, but the MODEL is "
                         f"{fam}.{hint}")
    for name, choices in (("sampler", comfy.samplers.KSampler.SAMPLERS), ("scheduler", comfy.samplers.KSampler.SCHEDULERS)):
        if getattr(p, name) not in choices:
            raise ValueError(f"CoRe² Official Preset: this ComfyUI has no {name} '{getattr(p, name)}'; update ComfyUI.")
    out = shifted(model, p.shift) if p.shift is not None else model
    notes = f"{label}. Negative: {p.negative}."
    return out, p.steps, p.cfg, p.sampler, p.scheduler, notes


class CoRe2OfficialPreset:
    DESCRIPTION = ("The settings the official CoRe² weights were trained with (SDXL: 50 steps, ddim + ddim_uniform, "
                   "cfg 5.5; SD3.5 Large: 28 steps, euler + simple, shift 3, cfg 3.5). Connect MODEL, steps, cfg, "
                   "sampler_name and scheduler to your sampler; the SD3.5 MODEL comes out with shift 3 applied.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "preset": (list(PRESETS), {"tooltip": "Which official weights."})}}

    RETURN_TYPES = ("MODEL", "INT", "FLOAT", comfy.samplers.KSampler.SAMPLERS, comfy.samplers.KSampler.SCHEDULERS,
                    "STRING")
    RETURN_NAMES = ("model", "steps", "cfg", "sampler_name", "scheduler", "notes")
    OUTPUT_TOOLTIPS = ("The MODEL (SD3.5: ModelSamplingSD3 shift 3 applied).", "Steps.", "CFG scale.", "Sampler.",
                       "Scheduler.", "The preset and the negative prompt the official pipeline uses.")
    FUNCTION = "apply"
    CATEGORY = CATEGORY

    def apply(self, model, preset):
        return apply_preset(model, preset)


NODE_CLASS_MAPPINGS = {"CoRe2OfficialPreset": CoRe2OfficialPreset}
NODE_DISPLAY_NAME_MAPPINGS = {"CoRe2OfficialPreset": "CoRe² Official Preset"}
