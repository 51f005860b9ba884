"""The weak-model contract (what Refine calls) and a closed-form baseline.

A weak model maps the conditional raw output r_c (ε or v, see guidance.py) to a prediction of the CFG raw output
r_cfg = r_u + g·(r_c − r_u). Inputs: r_c, σ, the CFG scale g, the step position in the schedule, and prompt
features of both the positive and the negative conditioning (prepared once per sampling run).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

FAMILIES = ("sd15", "sdxl", "sd3", "flux", "toy")  # "toy": the pack's own demo model (toy/)


@dataclass
class PromptFeatures:
    """Text features of one conditioning: token embeddings [B, T, D] and the pooled vector [B, P] (or None)."""

    tokens: torch.Tensor
    pooled: torch.Tensor | None = None

    def to(self, device=None, dtype=None) -> "PromptFeatures":
        pooled = None if self.pooled is None else self.pooled.to(device=device, dtype=dtype)
        return PromptFeatures(self.tokens.to(device=device, dtype=dtype), pooled)

    def expand(self, batch: int) -> "PromptFeatures":
        """Repeat a batch-1 feature set to `batch` rows (ComfyUI conds broadcast over the latent batch)."""
        def rep(t):
            if t is None or t.shape[0] == batch:
                return t
            if batch % t.shape[0]:
                raise ValueError(f"prompt batch {t.shape[0]} does not divide latent batch {batch}")
            return t.repeat_interleave(batch // t.shape[0], dim=0)

        return PromptFeatures(rep(self.tokens), rep(self.pooled))


@dataclass
class StepInfo:
    """Where an evaluation sits in the sampling schedule. index/total count schedule steps (0-based)."""

    index: int
    total: int
    schedule: torch.Tensor | None = None  # the run's σ schedule, length total + 1
    extra: dict = field(default_factory=dict)
    denoise: float = 1.0  # < 1: the schedule is the tail of a longer one (KSampler denoise), it starts below full noise


@dataclass
class GuidanceMemory:
    """What a run measured on its most recent slow step, per batch row: the guidance difference D = r_c − r_u in raw
    space [B,C,H,W], the σ it was measured at [B], and has [B] (False where no slow step has run yet; D is zero there).
    The "reuse" fill-in adds (g − 1)·D on fast steps; a weak model built with memory takes D as an input."""

    delta: torch.Tensor
    sigma: torch.Tensor
    has: torch.Tensor

    @staticmethod
    def empty(like: torch.Tensor) -> "GuidanceMemory":
        b = like.shape[0]
        return GuidanceMemory(torch.zeros_like(like), torch.ones(b, device=like.device, dtype=like.dtype),
                              torch.zeros(b, dtype=torch.bool, device=like.device))


class WeakModel(torch.nn.Module):
    """Base class. Subclasses set the class attributes and implement prepare() and predict()."""

    family: str = "any"  # one of FAMILIES, or "any"
    latent_channels: int | None = None  # None: any
    prediction: str | None = None  # "eps" | "flow" | None (any)
    uses_cfg_scale: bool = True  # False when the CFG scale is baked in (official weights)
    trained_cfg: float | None = None  # the scale the weights were trained at, if any
    remembers_guidance: bool = False  # fast steps build on the latest slow step's measured guidance (reset/observe_slow)
    name: str = "weak model"

    def prepare(self, positive: PromptFeatures, negative: PromptFeatures | None):
        """Per-run prompt context (computed once; the result is passed back to predict())."""
        return (positive, negative)

    def predict(self, raw_cond: torch.Tensor, sigma: torch.Tensor, cfg_scale: float, step: StepInfo, context) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, raw_cond, sigma, cfg_scale, step, context):
        return self.predict(raw_cond, sigma, cfg_scale, step, context)

    def setting_warnings(self, cfg: float | None, steps: int | None, scheduler: str | None) -> list[str]:
        """Warnings when sampling settings differ from what the weights were trained for (empty: none)."""
        return []

    def prompt_notes(self, positive: PromptFeatures | None, negative: PromptFeatures | None) -> list[str]:
        """Notes on the conditioning where it differs from what the weights were trained with (empty: none)."""
        return []

    def check_compatible(self, family: str, latent_channels: int, prediction: str) -> None:
        """Raise ValueError with a clear message if this weak model cannot serve that base model."""
        problems = []
        if self.family not in ("any", family):
            problems.append(f"it was built for {self.family} models, but the MODEL is {family}"
                            + ("" if family in FAMILIES else f" (a family CoRe² has no ready weak models for: "
                               f"collect and train one on it, or pick a training-free fill-in)"))
        if self.latent_channels is not None and self.latent_channels != latent_channels:
            problems.append(f"it expects {self.latent_channels}-channel latents, the MODEL uses {latent_channels}")
        if self.prediction is not None and self.prediction != prediction:
            problems.append(f"it predicts {self.prediction} outputs, the MODEL is a {prediction} model")
        if problems:
            raise ValueError(f"CoRe²: the weak model '{self.name}' does not fit this MODEL: " + "; ".join(problems)
                             + ". Load or train a weak model for this base model.")


class IdentityWeakModel(WeakModel):
    """Closed-form baseline f(r_c) = r_c: the prediction of CFG at scale 1.

    With it, slow steps are CFG at the effective scale 1 + w·(g − 1) and fast steps are cfg = 1. Useful as the
    floor a trained weak model must beat, and in tests.
    """

    name = "identity (cfg = 1)"

    def predict(self, raw_cond, sigma, cfg_scale, step, context):
        return raw_cond
