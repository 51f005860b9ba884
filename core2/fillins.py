"""Training-free fill-ins: what a fast step can use instead of a trained weak model. Plain torch.

Both follow the weak-model contract (weak.py), so every CoRe² sampler runs with them out of the box, and a trained
weak model has a floor to beat:

* "cond only" (the scheduled-CFG / Adaptive-Guidance idea): a fast step takes the conditional prediction as it is
  (CFG at scale 1). With w2s_scale 1, slow steps are plain CFG: "CFG on the first k steps, cond only after".
* "reuse" (the CFG-cache idea): a fast step adds the guidance difference measured on the most recent slow step,
  r_c + (g − 1)·(r_c − r_u)|last slow step, in raw (ε / v) space. Before any slow step it falls back to cond only.

The sampler tells a fill-in about each run (reset) and each slow step (observe_slow); weak models built with
memory (arch.py) listen too, other trained models ignore both.
"""
from __future__ import annotations

import torch

from .weak import WeakModel

COND_ONLY = "(training-free) cond only"
REUSE = "(training-free) reuse last guidance"


class CondOnlyFill(WeakModel):
    """Fast steps = the conditional prediction (CFG at scale 1)."""

    name = "cond only (training-free)"

    def predict(self, raw_cond, sigma, cfg_scale, step, context):
        return raw_cond


class ReuseFill(WeakModel):
    """Fast steps = cond + (g − 1)·(the last slow step's cond − uncond), in raw space."""

    name = "reuse last guidance (training-free)"
    remembers_guidance = True

    def __init__(self):
        super().__init__()
        self._delta: torch.Tensor | None = None

    def reset(self) -> None:
        self._delta = None

    def observe_slow(self, raw_cond: torch.Tensor, raw_uncond: torch.Tensor, sigma, step) -> None:
        self._delta = (raw_cond - raw_uncond).detach()

    def predict(self, raw_cond, sigma, cfg_scale, step, context):
        d = self._delta
        if d is None or d.shape != raw_cond.shape:
            return raw_cond
        return raw_cond + (float(cfg_scale) - 1.0) * d.to(raw_cond)


FILLINS = {COND_ONLY: CondOnlyFill, REUSE: ReuseFill}


def make(name: str) -> WeakModel:
    if name not in FILLINS:
        raise ValueError(f"no training-free fill-in named {name!r}; choose one of {', '.join(FILLINS)}")
    return FILLINS[name]()
