"""The scenes model as a real ComfyUI model: an SD3-style MMDiT (ComfyUI's own class, through
comfy.supported_models.SD3 and comfy.model_base.SD3: flow matching, ModelSamplingDiscreteFlow) on the scenes
"latent" (the 64×64 picture folded into 4×4 pixel patches: 48 channels at 16×16, exact, no VAE), attending jointly to
the toy text encoder's tokens and conditioned on its pooled vector.

Imports ComfyUI: import this module only after tools.comfy_env.activate() (or inside ComfyUI).
"""
from __future__ import annotations

import json
import math

import torch

import comfy.supported_models

from .. import text as toy_text
from ..model import DIFFUSION_PREFIX, TEXT_PREFIX, ToyLatent, split_state_dict  # noqa: F401 (the shared file layout)
from . import text

PATCH = 4  # pixels per latent cell side
LATENT_CHANNELS = 3 * PATCH * PATCH
LATENT_SIZE = 16
# ModelSamplingDiscreteFlow's sampling shift. Training draws its noise levels on its own (train.py), so this only
# sets where a sampler's steps fall. Below 1 it spends fewer, coarser steps at high noise, where the shapes and their
# places are decided: at shift 1 CFG stopped improving after 10 steps, at 0.2 it keeps improving to 40 (10 / 20 / 40
# steps: 0.805 / 0.872 / 0.903, against 0.905 / 0.901 / 0.904 at shift 1), as real text-to-image models keep
# improving to 20–30 steps. README, "The scenes world", has the measurements.
SHIFT = 0.2
DEPTH = 4  # the shipped model's; width 64·depth. A CPU rebuild may train a shallower one (train.py --depth)
DEPTHS = (2, 3, 4)


def mmdit_config(depth: int = DEPTH) -> dict:
    """The MMDiT layout at `depth` blocks (ComfyUI's MMDiT: width 64·depth, as SD3's)."""
    if depth not in DEPTHS:
        raise ValueError(f"scenes-model depth {depth} is not one of {DEPTHS}")
    return dict(
        in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, patch_size=2, depth=depth, num_blocks=depth,
        mlp_ratio=4.0, adm_in_channels=toy_text.WIDTH, input_size=LATENT_SIZE,
        context_embedder_config={"target": "torch.nn.Linear",
                                 "params": {"in_features": toy_text.WIDTH, "out_features": 64 * depth}},
        pos_embed_max_size=LATENT_SIZE // 2, num_patches=(LATENT_SIZE // 2) ** 2, pos_embed_scaling_factor=None,
        qk_norm=None, x_block_self_attn_layers=[],
    )


MMDIT_CONFIG = mmdit_config()
FORMAT = "core2-toy-scenes"
VERSION = "2"  # 2: seven-word prompts and a context layer in the text encoder (toy/scenes/text.py)


class ScenesLatent(ToyLatent):
    """Pixel space folded into 4×4 patches (48 channels, −1..1, no VAE)."""
    patch = PATCH
    latent_channels = LATENT_CHANNELS


class Scenes(comfy.supported_models.SD3):
    """Model config of the scenes world (an SD3-family flow model; family "sd3" to the pack)."""
    unet_config = MMDIT_CONFIG
    sampling_settings = {"shift": SHIFT}
    latent_format = ScenesLatent
    memory_usage_factor = 1.0
    supported_inference_dtypes = [torch.float32]
    native_latent_size = LATENT_SIZE  # trained at this latent size only (read by nodes/model_info.latent_size_limits)


def build(depth: int = DEPTH) -> "comfy.model_base.SD3":
    """An uninitialised scenes BaseModel on CPU (float32)."""
    cfg = Scenes(mmdit_config(depth))
    cfg.unet_config["dtype"] = torch.float32
    return cfg.get_model({})


def sincos_positions(width: int, side: int) -> torch.Tensor:
    """[1, side², width] fixed 2-D sine-cosine position embedding (as DiT/SD3 use)."""
    coords = torch.arange(side, dtype=torch.float64)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    quarter = width // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    parts = []
    for grid in (yy.flatten(), xx.flatten()):
        angles = grid[:, None] * omega[None]
        parts += [torch.sin(angles), torch.cos(angles)]
    return torch.cat(parts, dim=1)[None].float()


def initialise(base, seed: int) -> None:
    """PyTorch's default init for every layer (ComfyUI's ops skip it), adaLN-zero and a zero output layer (DiT)."""
    from .. import model as toy_model

    dm = base.diffusion_model
    toy_model.reset_parameters(dm, seed)
    with torch.no_grad():
        dm.pos_embed.copy_(sincos_positions(dm.hidden_size, int(math.isqrt(dm.pos_embed.shape[1]))))
        for name, mod in dm.named_modules():
            if name.endswith("adaLN_modulation") or name == "final_layer.linear":
                last = mod[-1] if isinstance(mod, torch.nn.Sequential) else mod
                last.weight.zero_()
                last.bias.zero_()


def metadata(depth: int = DEPTH) -> dict:
    return {"format": FORMAT, "version": VERSION, "mmdit_config": json.dumps(mmdit_config(depth)), "shift": str(SHIFT),
            "vocab": json.dumps(list(text.VOCAB)), "width": str(toy_text.WIDTH)}


def depth_of(meta: dict) -> int:
    """The MMDiT depth a file's metadata records (files from before --depth: the shipped depth)."""
    return int(json.loads(meta.get("mmdit_config", "{}")).get("depth", DEPTH))


def check_metadata(meta: dict | None, path, any_version: bool = False) -> None:
    """Refuses a file this code cannot run; any_version: only the format and layout (a warm start may change the rest)."""
    meta = meta or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a CoRe² scenes-world model (its metadata has no format={FORMAT}). "
                         "Use the file made by `python -m toy.scenes.train`.")
    depth = depth_of(meta)
    if (json.loads(meta.get("vocab", "[]")) != list(text.VOCAB)
            or (meta.get("version") != VERSION and not any_version)
            or depth not in DEPTHS
            or json.loads(meta.get("mmdit_config", "{}")) != json.loads(json.dumps(mmdit_config(depth)))):
        raise ValueError(f"{path} was trained with another vocabulary, text encoder or MMDiT layout than this code; "
                         "retrain it with `python -m toy.scenes.train` from this version of the pack.")
