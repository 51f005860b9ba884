"""The toy world's "latent": the 32×32 picture mapped to −1..1 and folded into 2×2 patches (pixel-unshuffle),
12 channels at 16×16. There is no VAE: encoding and decoding are exact reshapes. Plain torch, no ComfyUI.
"""
from __future__ import annotations

import torch

PATCH = 2
LATENT_CHANNELS = 3 * PATCH * PATCH
RESOLUTION = 32
LATENT_SIZE = RESOLUTION // PATCH


def to_latent(images: torch.Tensor, patch: int = PATCH) -> torch.Tensor:
    """[B, 3, H, W] pictures in 0..1 -> [B, 3·p², H/p, W/p] latents in −1..1 (p = patch: 2 in v1, 4 in scenes)."""
    return torch.nn.functional.pixel_unshuffle(images * 2.0 - 1.0, patch)


def to_images(latent: torch.Tensor, patch: int = PATCH) -> torch.Tensor:
    """[B, 3·p², h, w] latents -> [B, 3, p·h, p·w] pictures in 0..1 (clamped)."""
    channels = 3 * patch * patch
    if latent.ndim != 4 or latent.shape[1] != channels:
        raise ValueError(f"this toy world's latent has shape [B, {channels}, h, w]; got {list(latent.shape)}. "
                         "Use the latent of CoRe² Toy Empty Latent / a toy-world sampler of the same world, "
                         "not an SD latent.")
    return ((torch.nn.functional.pixel_shuffle(latent.float(), patch) + 1.0) / 2.0).clamp(0.0, 1.0)


def preview_factors(patch: int = PATCH) -> list[list[float]]:
    """Latent channel -> RGB weights for ComfyUI's latent previews (each channel is one sub-pixel of one colour)."""
    rows = []
    for k in range(3 * patch * patch):
        row = [0.0, 0.0, 0.0]
        row[k // (patch * patch)] = 1.0 / (patch * patch)
        rows.append(row)
    return rows
