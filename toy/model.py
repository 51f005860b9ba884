"""The toy text-to-image model as a real ComfyUI model: a small comfy UNetModel in a BaseModel (v-prediction as SD2,
ModelSamplingDiscrete, SD's noise schedule) on the toy "latent" (toy/pixels.py: the 32×32 picture folded into
2×2 patches, 12 channels at 16×16), cross-attending to the toy text encoder's tokens.

Imports ComfyUI: import this module only after tools.comfy_env.activate() (or inside ComfyUI).
"""
from __future__ import annotations

import json

import torch

import comfy.latent_formats
import comfy.model_base
import comfy.supported_models_base

from . import pixels, text
from .pixels import LATENT_CHANNELS, LATENT_SIZE, RESOLUTION  # noqa: F401

UNET_CONFIG = dict(
    image_size=LATENT_SIZE, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, model_channels=32,
    num_res_blocks=[1, 1, 1], channel_mult=[1, 2, 2], transformer_depth=[0, 1, 1],
    transformer_depth_output=[0, 0, 1, 1, 1, 1], transformer_depth_middle=1, use_spatial_transformer=True,
    legacy=False, context_dim=text.WIDTH, use_linear_in_transformer=True, adm_in_channels=None,
    use_temporal_attention=False, use_temporal_resblock=False, use_checkpoint=False,
)
DIFFUSION_PREFIX = "diffusion_model."
TEXT_PREFIX = "text_encoder."


class ToyLatent(comfy.latent_formats.LatentFormat):
    """Pixel space folded into patch×patch cells (shapes: 2×2, 12 channels; −1..1, no VAE)."""
    patch = pixels.PATCH
    latent_channels = LATENT_CHANNELS
    scale_factor = 1.0

    def __init__(self):
        self.latent_rgb_factors = pixels.preview_factors(self.patch)
        self.latent_rgb_factors_bias = [0.0, 0.0, 0.0]


class Toy(comfy.supported_models_base.BASE):
    """Model config of the toy world (family "toy")."""
    unet_config = UNET_CONFIG
    unet_extra_config = {"num_heads": -1, "num_head_channels": 32}
    latent_format = ToyLatent
    sampling_settings = {}  # ModelSamplingDiscrete with SD's schedule (scaled linear 0.00085..0.012, 1000 steps)
    memory_usage_factor = 1.0
    supported_inference_dtypes = [torch.float32]
    native_latent_size = LATENT_SIZE  # trained at this latent size only (read by nodes/model_info.latent_size_limits)

    def model_type(self, state_dict, prefix=""):
        return comfy.model_base.ModelType.V_PREDICTION

    def inpaint_model(self):
        return False  # 12 input channels are the picture's patches, not SD's latent + mask + masked image


def build(dtype: torch.dtype = torch.float32) -> comfy.model_base.BaseModel:
    """An (uninitialised) toy BaseModel on CPU."""
    cfg = Toy(UNET_CONFIG)
    cfg.unet_config["dtype"] = dtype
    return cfg.get_model({})


def reset_parameters(module: torch.nn.Module, seed: int) -> None:
    """PyTorch's default init for every layer (ComfyUI's ops skip it), from a seed."""
    torch.manual_seed(seed)
    for m in module.modules():
        for cls in type(m).__mro__:
            if cls.__module__.startswith("torch.nn") and "reset_parameters" in cls.__dict__:
                cls.reset_parameters(m)
                break


def split_state_dict(sd: dict) -> tuple[dict, dict]:
    unet = {k[len(DIFFUSION_PREFIX):]: v for k, v in sd.items() if k.startswith(DIFFUSION_PREFIX)}
    txt = {k[len(TEXT_PREFIX):]: v for k, v in sd.items() if k.startswith(TEXT_PREFIX)}
    return unet, txt


def metadata() -> dict:
    return {"format": "core2-toy-t2i", "version": "1", "unet_config": json.dumps(UNET_CONFIG),
            "vocab": json.dumps(list(text.VOCAB)), "max_tokens": str(text.MAX_TOKENS), "width": str(text.WIDTH)}


def check_metadata(meta: dict | None, path) -> None:
    meta = meta or {}
    if meta.get("format") != "core2-toy-t2i":
        raise ValueError(f"{path} is not a CoRe² toy-world model (its metadata has no format=core2-toy-t2i). "
                         "Use the file made by `python -m toy.train_toy`.")
    if json.loads(meta.get("vocab", "[]")) != list(text.VOCAB) or int(meta.get("width", 0)) != text.WIDTH:
        raise ValueError(f"{path} was trained with another toy vocabulary or width than this code; "
                         "retrain it with `python -m toy.train_toy` from this version of the pack.")
    if json.loads(meta.get("unet_config", "{}")) != json.loads(json.dumps(UNET_CONFIG)):
        raise ValueError(f"{path} has another UNet layout than this code; retrain it with `python -m toy.train_toy`.")
