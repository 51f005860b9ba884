"""Warnings when a run differs from how the official weights were trained (docs/method.md §6)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OfficialSettings:
    """How the official weights were trained and are meant to be sampled (ComfyUI names), one owner for the numbers."""

    label: str  # what a user picks (CoRe² Official Preset)
    family: str  # the WeakModel family of the base model
    prediction: str
    steps: int
    cfg: float
    sampler: str
    scheduler: str
    shift: float | None  # ModelSamplingSD3 shift (flow models), None: the model's own sampling
    negative: str  # what the official pipeline uses as the negative


OFFICIAL = {
    "sdxl": OfficialSettings("SDXL (official weights): 50 steps, ddim, ddim_uniform, cfg 5.5", "sdxl", "eps", 50, 5.5,
                             "ddim", "ddim_uniform", None,
                             "an all-zero negative: ConditioningZeroOut of the positive (workflow 06)"),
    "sd35": OfficialSettings("SD3.5 Large (official weights): 28 steps, euler, simple, shift 3, cfg 3.5", "sd3", "flow",
                             28, 3.5, "euler", "simple", 3.0, "the encoding of an empty negative prompt"),
}

# Schedulers (ComfyUI names) whose σ spacing matches the training schedule closely:
# SDXL was trained on DDIM 50 "leading" steps (ComfyUI: sampler ddim + scheduler ddim_uniform; normal/sgm_uniform/simple
# are close); SD3.5 on FlowMatch-Euler 28 steps with shift 3 (ComfyUI: euler + simple/normal/sgm_uniform, shift 3).
CLOSE_SCHEDULERS = {"sdxl": ("ddim_uniform", "normal", "simple", "sgm_uniform"),
                    "sd35": ("simple", "normal", "sgm_uniform")}
TRAINING = {"sdxl": "DDIM, 50 steps, cfg ≈ 5.5 (inferred from the demo)", "sd35": "Euler, 28 steps, shift 3, cfg 3.5"}
CFG_TOLERANCE = 0.25
ZERO_NEGATIVE_HINT = "feed ConditioningZeroOut of the positive as the negative (workflow 06)"


def compatibility_warnings(weak, cfg: float | None, steps: int | None, scheduler_name: str | None) -> list[str]:
    """Human-readable warnings (empty when the run matches training). `weak` is an OfficialWeakModel."""
    variant = getattr(weak, "variant", None)
    if variant not in TRAINING:
        return []
    out = []
    trained = TRAINING[variant]
    if cfg is not None and abs(float(cfg) - weak.trained_cfg) > CFG_TOLERANCE:
        out.append(f"cfg {cfg:g} differs from the {weak.trained_cfg:g} the official {variant} weak model was trained at "
                   f"({trained}); its CFG scale is baked in, so fast steps behave like cfg ≈ {weak.trained_cfg:g}.")
    if steps is not None and int(steps) != weak.trained_steps:
        out.append(f"{steps} steps differ from the {weak.trained_steps} the weights were trained with ({trained}); each "
                   f"LoRA is picked by the fraction of steps done, so it sees noise levels it was not trained on. "
                   f"Consider lora_index_mode='sigma'.")
    if scheduler_name and scheduler_name not in CLOSE_SCHEDULERS[variant]:
        out.append(f"scheduler '{scheduler_name}' spaces σ differently from training ({trained}); prefer "
                   f"{' / '.join(CLOSE_SCHEDULERS[variant])}, or use lora_index_mode='sigma'.")
    return out


def prompt_notes(weak, positive, negative) -> list[str]:
    """Notes on the conditioning (PromptFeatures or None) where it differs from the official pipelines' inputs."""
    from .recipes import CLIP_TOKENS, clip_rows

    variant = getattr(weak, "variant", None)
    out = []
    if variant == "sdxl" and negative is not None and (bool(negative.tokens.any()) or (
            negative.pooled is not None and bool(negative.pooled.any()))):
        out.append("the official SDXL weights were trained to imitate CFG against an all-zero negative (the official "
                   "pipeline's empty negative prompt); this run's slow steps use your negative conditioning. For the "
                   f"official behaviour {ZERO_NEGATIVE_HINT}.")
    if variant == "sd35":
        for name, f in (("positive", positive), ("negative", negative)):
            if f is not None and clip_rows(f.tokens) > CLIP_TOKENS:
                out.append(f"the {name} prompt is longer than 75 CLIP tokens: the official SD3.5 weak model reads its "
                           "first 77 CLIP tokens (the official tokenizers truncate there) and its T5 tokens.")
    return out
