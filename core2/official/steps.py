"""Which LoRA of the bank serves a sampling step.

* "official" (default): the rule of the official pipelines, evaluated in Python double precision with its rounding
  quirks: zz = min(max(0, floor(L − (N − i)/N·L)), L − 1). With L = N = 50 step 22 gets 21 and LoRA 22 is never used.
* "sigma": non-official; the LoRA whose training-schedule σ is nearest to the current σ. Training grids
  [inferred, docs/method.md §6]: SDXL DDIM 50 steps, "leading" spacing (t = 981, 961, …, 1) on the SDXL discrete
  schedule (scaled-linear betas 0.00085 → 0.012); SD3.5 FlowMatch-Euler 28 steps, shift 3. Distance is measured in
  log σ for SDXL and in σ for SD3.5 (flow σ ∈ [0, 1]).
"""
from __future__ import annotations

import math

import torch

INDEX_MODES = ("official", "sigma")


def official_lora_index(i: int, total: int, n_lora: int) -> int:
    """The official step → LoRA mapping (i 0-based, total = number of sampling steps)."""
    if total <= 0:
        raise ValueError("total steps must be positive")
    L = n_lora
    return min(max(0, math.floor(L - (total - i) / total * L)), L - 1)


def sdxl_discrete_sigmas() -> torch.Tensor:
    """σ(t), t = 0..999, of the SDXL (scaled-linear) discrete schedule, float64 (ComfyUI ModelSamplingDiscrete)."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    ac = torch.cumprod(1.0 - betas, dim=0)
    return ((1 - ac) / ac) ** 0.5


def sdxl_training_sigmas(steps: int = 50) -> torch.Tensor:
    """σ of the DDIM "leading" timesteps (steps_offset 1): t = 981, 961, …, 1 for 50 steps."""
    ratio = 1000 // steps
    t = torch.arange(steps - 1, -1, -1) * ratio + 1
    return sdxl_discrete_sigmas()[t]


def sd35_training_sigmas(steps: int = 28, shift: float = 3.0) -> torch.Tensor:
    """σ of diffusers' FlowMatchEulerDiscreteScheduler (shift 3): 1.0, 0.9874, …, 0.0089 for 28 steps."""
    def sh(s):
        return shift * s / (1 + (shift - 1) * s)

    sigma_min = sh(torch.tensor(1.0 / 1000, dtype=torch.float64))
    s = torch.linspace(1.0, float(sigma_min), steps, dtype=torch.float64)
    return sh(s)


TRAINING_SIGMAS = {"sdxl": sdxl_training_sigmas, "sd35": sd35_training_sigmas}


def sigma_nearest_lora_index(sigma: float, grid: torch.Tensor, log_space: bool) -> int:
    """Index of the grid σ nearest to `sigma` (grid[j] serves LoRA j)."""
    s = float(sigma)
    if log_space:
        g = grid.clamp_min(1e-12).log()
        s = math.log(max(s, 1e-12))
    else:
        g = grid
    return int((g - s).abs().argmin())
