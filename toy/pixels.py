"""The toy world's "latent": the 32×32 picture mapped to −1..1 and folded into 2×2 patches (pixel-unshuffle),
12 channels at 16×16. There is no VAE: encoding and decoding are exact reshapes. Plain torch, no ComfyUI.
"""
from __future__ import annotations

import torch

PATCH = 2
LATENT_CHANNELS = 3 * PATCH * PATCH
RESOLUTION = 32
LATENT_SIZE = RESOLUTION // PATCH


def to_latent(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] pictures in 0..1 -> [B, 12, H/2, W/2] latents in −1..1."""
    return torch.nn.functional.pixel_unshuffle(images * 2.0 - 1.0, PATCH)


def to_images(latent: torch.Tensor) -> torch.Tensor:
    """[B, 12, h, w] latents -> [B, 3, 2h, 2w] pictures in 0..1 (clamped)."""
    if latent.ndim != 4 or latent.shape[1] != LATENT_CHANNELS:
        raise ValueError(f"a toy-world latent has shape [B, {LATENT_CHANNELS}, h, w]; got {list(latent.shape)}. "
                         "Use the latent of CoRe² Toy Empty Latent / a toy-world sampler, not an SD latent.")
    return ((torch.nn.functional.pixel_shuffle(latent.float(), PATCH) + 1.0) / 2.0).clamp(0.0, 1.0)


def preview_factors() -> list[list[float]]:
    """Latent channel -> RGB weights for ComfyUI's latent previews (each channel is one sub-pixel of one colour)."""
    rows = []
    for k in range(LATENT_CHANNELS):
        row = [0.0, 0.0, 0.0]
        row[k // (PATCH * PATCH)] = 1.0 / (PATCH * PATCH)
        rows.append(row)
    return rows
