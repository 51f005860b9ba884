"""Zigzag (Z-Sampling) loops in k-diffusion σ terms, for the Euler sampler (docs/method.md §5).

x = x0 + σ·d with d = (x − D(x, σ))/σ. One zigzag step from σ_i to σ_{i+1}:
  zig  x'   = x_i + (σ_{i+1} − σ_i)·d(x_i, σ_i)            denoise with the guided prediction
  zag  x̃_i = x' − (σ_{i+1} − σ_i)·d_inv(x', σ_{i+1})       invert with the inversion prediction, at x''s noise level
  zig  x_{i+1} = x̃_i + (σ_{i+1} − σ_i)·d(x̃_i, σ_i)         denoise again
This is the ideal inversion (the exact reverse of the Euler step), not the official SDXL DDIM-inverse quirk, which
lifts x' one step too far. The model callable is told which prediction to make through a model_options key.
"""
from __future__ import annotations

import torch

INVERT_KEY = "core2_zigzag_invert"


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    return (x - denoised) / sigma.reshape(sigma.shape + (1,) * (x.ndim - sigma.ndim)) if sigma.ndim else (x - denoised) / sigma


def euler_step(x, d, sigma, sigma_next):
    return x + d * (sigma_next - sigma)


def euler_invert(x_next, d, sigma, sigma_next):
    """Exact reverse of euler_step for the same d."""
    return x_next - d * (sigma_next - sigma)


def _invert_args(extra_args: dict) -> dict:
    mo = dict(extra_args.get("model_options", {}))
    mo[INVERT_KEY] = True
    return {**extra_args, "model_options": mo}


@torch.no_grad()
def sample_zigzag_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, zigzag_steps=None):
    """Euler with zigzag on the first `zigzag_steps` steps (default: all but the last)."""
    extra_args = {} if extra_args is None else extra_args
    inv_args = _invert_args(extra_args)
    n = len(sigmas) - 1
    zz = n - 1 if zigzag_steps is None else max(0, min(int(zigzag_steps), n - 1))
    s_in = x.new_ones([x.shape[0]])
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, s * s_in, **extra_args)
        x_next = euler_step(x, to_d(x, s, denoised), s, s_next)
        if i < zz and s_next > 0:
            den_inv = model(x_next, s_next * s_in, **inv_args)
            x_back = euler_invert(x_next, to_d(x_next, s_next, den_inv), s, s_next)
            denoised = model(x_back, s * s_in, **extra_args)
            x_next = euler_step(x_back, to_d(x_back, s, denoised), s, s_next)
        if callback is not None:
            callback({"x": x_next, "i": i, "sigma": s, "sigma_hat": s, "denoised": denoised})
        x = x_next
    return x
