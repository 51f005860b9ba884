"""The toy world for scripts and nodes: load the toy model, encode prompts, make empty latents, decode, generate.

ComfyUI is imported lazily: call tools.comfy_env.activate() first when running outside ComfyUI.

    model = load_toy_model()                       # comfy ModelPatcher (v-prediction, ModelSamplingDiscrete)
    positive, negative = encode("a red triangle at the top"), encode("")
    latent = empty_latent(4)                       # [4, 12, 16, 16]
    samples = comfy.sample.sample(model, noise, 20, 5.0, "euler", "normal", positive, negative, latent)
    images = decode(samples)                       # IMAGE [4, 32, 32, 3], 0..1
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from . import pixels, text

log = logging.getLogger(__name__)
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "toy_t2i.safetensors"
UNCOND_PROMPT = ""  # the prompt the model was trained to treat as "no prompt"
NODE_SIZE = pixels.LATENT_SIZE * 8  # width/height to give ComfyUI nodes: they count 8 pixels per latent cell (128 → 16×16)
DEFAULTS = {"steps": 20, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal"}


@dataclass
class ToyWorld:
    patcher: object  # comfy.model_patcher.ModelPatcher
    text_encoder: text.ToyTextEncoder
    path: Path
    metadata: dict


_LOCK = threading.Lock()
_CACHE: dict[tuple, ToyWorld] = {}


def _load(path: Path) -> ToyWorld:
    import comfy.model_management as mm
    import comfy.model_patcher
    from safetensors import safe_open
    from safetensors.torch import load_file

    from . import model

    if not path.is_file():
        raise FileNotFoundError(f"no toy-world model at {path}. The pack ships toy/weights/toy_t2i.safetensors; "
                                "rebuild it with `python -m toy.train_toy --out <path>`.")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    model.check_metadata(meta, path)
    unet_sd, text_sd = model.split_state_dict(load_file(str(path)))
    base = model.build()
    base.diffusion_model.load_state_dict({k: v.float() for k, v in unet_sd.items()}, strict=True)
    base.diffusion_model.eval()
    encoder = text.ToyTextEncoder()
    encoder.load_state_dict({k: v.float() for k, v in text_sd.items()}, strict=True)
    encoder.eval().requires_grad_(False)
    patcher = comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    log.info("toy world: loaded %s", path)
    return ToyWorld(patcher, encoder, path, meta)


def load(path: str | Path | None = None) -> ToyWorld:
    """The toy world of a weights file (default: the shipped one), loaded once per file version."""
    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    key = (str(path.resolve()), path.stat().st_mtime_ns if path.is_file() else None)
    with _LOCK:
        if key not in _CACHE:
            with torch.inference_mode(False):  # loadable inside ComfyUI's inference mode, trainable later
                _CACHE[key] = _load(path)
        return _CACHE[key]


def load_toy_model(path: str | Path | None = None):
    """The toy diffusion model as a ComfyUI ModelPatcher (a fresh clone: patch it freely)."""
    return load(path).patcher.clone()


def encode(prompt: str | list[str], path: str | Path | None = None) -> list:
    """CONDITIONING for a prompt: [[tokens [B, 16, 64], {"pooled_output": [B, 64]}]] (B = number of prompts)."""
    tokens, pooled = load(path).text_encoder.encode(prompt)
    return [[tokens.detach().clone(), {"pooled_output": pooled.detach().clone()}]]


def empty_latent(batch: int = 1) -> torch.Tensor:
    """Zeros shaped like the toy model's latent: [B, 12, 16, 16] (a 32×32 picture)."""
    return torch.zeros(batch, pixels.LATENT_CHANNELS, pixels.LATENT_SIZE, pixels.LATENT_SIZE)


def decode(latent) -> torch.Tensor:
    """Toy latent (tensor or ComfyUI LATENT dict) -> IMAGE [B, 32, 32, 3] in 0..1."""
    samples = latent["samples"] if isinstance(latent, dict) else latent
    return pixels.to_images(samples).movedim(1, -1).contiguous()


def encode_image(image: torch.Tensor) -> torch.Tensor:
    """IMAGE [B, 32, 32, 3] -> toy latent [B, 12, 16, 16] (exact; the toy world has no VAE)."""
    if image.ndim != 4 or image.shape[-1] != 3 or image.shape[1] != pixels.RESOLUTION:
        raise ValueError(f"the toy world works on {pixels.RESOLUTION}×{pixels.RESOLUTION} RGB pictures; "
                         f"got an IMAGE of shape {list(image.shape)}")
    return pixels.to_latent(image.movedim(-1, 1).float())


def generate(prompts: list[str], cfg: float = DEFAULTS["cfg"], steps: int = DEFAULTS["steps"],
             sampler_name: str = DEFAULTS["sampler_name"], scheduler: str = DEFAULTS["scheduler"], seed: int = 0,
             model=None, negative: str = UNCOND_PROMPT, path: str | Path | None = None) -> torch.Tensor:
    """Pictures for prompts (one each, batched) through comfy.sample.sample: IMAGE [B, 32, 32, 3].

    `model` may be a patched ModelPatcher of the toy model (e.g. with CoRe² sampling attached)."""
    import comfy.sample

    model = model if model is not None else load_toy_model(path)
    latent = empty_latent(len(prompts))
    noise = comfy.sample.prepare_noise(latent, seed)
    samples = comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, encode(prompts, path),
                                  encode(negative, path), latent, denoise=1.0, disable_pbar=True, seed=seed)
    return decode(samples)
