"""Guidance math of CoRe² (docs/method.md §1–2), independent of ComfyUI.

Spaces: ComfyUI hands out x0 predictions ("denoised"); the weak model works on the model's raw output
r = (x − x0)/σ (ε for eps models, velocity for flow models). Every mix here is affine with weights summing
to one, so it gives the same result in x0 or raw space.
"""
from __future__ import annotations

import torch


def _bcast(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    sigma = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    return sigma.reshape(sigma.shape[:1] + (1,) * (like.ndim - 1)) if sigma.ndim else sigma


def raw_from_denoised(x: torch.Tensor, denoised: torch.Tensor, sigma) -> torch.Tensor:
    """ε (eps models) or v (flow models) from an x0 prediction: (x − x0)/σ."""
    return (x - denoised) / _bcast(sigma, x)


def denoised_from_raw(x: torch.Tensor, raw: torch.Tensor, sigma) -> torch.Tensor:
    return x - raw * _bcast(sigma, x)


def cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance, written like ComfyUI's default (bit-compatible with it)."""
    return uncond + (cond - uncond) * scale


def extrapolate(start: torch.Tensor, target: torch.Tensor, w: float) -> torch.Tensor:
    """start + w·(target − start): w = 1 returns `target` itself, w > 1 goes past it."""
    if w == 1.0:
        return target
    return start + (target - start) * w


def weak_to_strong(weak: torch.Tensor, strong: torch.Tensor, w: float) -> torch.Tensor:
    """W2S guidance: extrapolate from the weak prediction towards (and past) the strong one. w = 1 returns `strong`."""
    return extrapolate(weak, strong, w)


def derived_cfg(x0: torch.Tensor, cond_x0: torch.Tensor, uncond_x0: torch.Tensor) -> torch.Tensor:
    """Per-row CFG scale g from x0 = u + g·(c − u) (least squares), where the caller does not know the scale."""
    d = (cond_x0 - uncond_x0).flatten(1).float()
    num = ((x0 - uncond_x0).flatten(1).float() * d).sum(1)
    return num / d.pow(2).sum(1).clamp_min(1e-30)


def implied_uncond(cond: torch.Tensor, guided: torch.Tensor, scale: float) -> torch.Tensor:
    """The unconditional prediction that CFG at `scale` would need to give `guided`: u = (g·c − guided)/(g − 1)."""
    if abs(scale - 1.0) < 1e-6:
        return cond
    return (cond * scale - guided) / (scale - 1.0)

