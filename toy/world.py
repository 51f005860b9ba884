"""The toy worlds for scripts and nodes: load a toy model, encode prompts, make empty latents, decode, generate.

Two worlds (WORLDS): "shapes" (v1: one shape at a place, 32×32, a v-prediction UNet) and "scenes" (two objects in a
relation, 64×64, a flow-matching MMDiT, toy/scenes/). A weights file says which world it belongs to (its metadata
format); everything after loading follows from the file.

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


@dataclass(frozen=True)
class WorldSpec:
    name: str
    weights: Path  # the shipped model
    patch: int  # pixels per latent cell side (the latent is the picture folded into patch×patch cells)
    resolution: int  # picture side in pixels
    defaults: dict  # sampling settings the world is measured with
    format: str  # weights-file metadata format

    @property
    def latent_channels(self) -> int:
        return 3 * self.patch * self.patch

    @property
    def latent_size(self) -> int:
        return self.resolution // self.patch

    @property
    def node_size(self) -> int:
        """width/height to give ComfyUI nodes, which count 8 pixels per latent cell."""
        return self.latent_size * 8


WORLDS = {
    "shapes": WorldSpec("shapes", DEFAULT_WEIGHTS, pixels.PATCH, pixels.RESOLUTION, DEFAULTS, "core2-toy-t2i"),
    "scenes": WorldSpec("scenes", WEIGHTS_DIR / "scenes_t2i.safetensors", 4, 64,
                        {"steps": 20, "cfg": 5.0, "sampler_name": "euler", "scheduler": "simple"}, "core2-toy-scenes"),
}


def spec(name: str) -> WorldSpec:
    if name not in WORLDS:
        raise ValueError(f"no toy world named {name!r}; choose one of {', '.join(WORLDS)}")
    return WORLDS[name]


@dataclass
class ToyWorld:
    patcher: object  # comfy.model_patcher.ModelPatcher
    text_encoder: text.ToyTextEncoder
    path: Path
    metadata: dict
    spec: WorldSpec = WORLDS["shapes"]


_LOCK = threading.Lock()
_CACHE: dict[tuple, ToyWorld] = {}


def _build(meta: dict, path: Path):
    """(spec, empty BaseModel, text encoder) for the world a file's metadata names; checks the file fits this code."""
    if meta.get("format") == WORLDS["scenes"].format:
        from .scenes import model as scenes_model, text as scenes_text

        scenes_model.check_metadata(meta, path)
        built = scenes_model.build(scenes_model.depth_of(meta))
        return WORLDS["scenes"], built, scenes_text.encoder(), scenes_model.split_state_dict
    from . import model

    model.check_metadata(meta, path)
    return WORLDS["shapes"], model.build(), text.ToyTextEncoder(), model.split_state_dict


def _load(path: Path) -> ToyWorld:
    import comfy.model_management as mm
    import comfy.model_patcher
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"no toy-world model at {path}. The pack ships toy/weights/toy_t2i.safetensors and "
                                "scenes_t2i.safetensors; rebuild them with `python -m toy.train_toy` / "
                                "`python -m toy.scenes.train`.")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    world_spec, base, encoder, split = _build(meta, path)
    unet_sd, text_sd = split(load_file(str(path)))
    base.diffusion_model.load_state_dict({k: v.float() for k, v in unet_sd.items()}, strict=True)
    base.diffusion_model.eval()
    encoder.load_state_dict({k: v.float() for k, v in text_sd.items()}, strict=True)
    encoder.eval().requires_grad_(False)
    patcher = comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    log.info("toy world %s: loaded %s", world_spec.name, path)
    return ToyWorld(patcher, encoder, path, meta, world_spec)


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


def conditioning(text_encoder, prompt: str | list[str]) -> list:
    """CONDITIONING for a prompt from a toy text encoder: [[tokens [B, 16, 64], {"pooled_output": [B, 64]}]]
    (B = number of prompts), like a CLIP text encoder's."""
    tokens, pooled = text_encoder.encode(prompt)
    return [[tokens.detach().clone(), {"pooled_output": pooled.detach().clone()}]]


def encode(prompt: str | list[str], path: str | Path | None = None) -> list:
    """CONDITIONING for a prompt with the text encoder of the toy model at path (default: the shipped one)."""
    return conditioning(load(path).text_encoder, prompt)


def empty_latent(batch: int = 1, world: str = "shapes") -> torch.Tensor:
    """Zeros shaped like a toy world's latent: shapes [B, 12, 16, 16] (32×32), scenes [B, 48, 16, 16] (64×64)."""
    w = spec(world)
    return torch.zeros(batch, w.latent_channels, w.latent_size, w.latent_size)


def _patch_of_channels(channels: int) -> int:
    for w in WORLDS.values():
        if w.latent_channels == channels:
            return w.patch
    shapes = ", ".join(f"{w.latent_channels} ({w.name})" for w in WORLDS.values())
    raise ValueError(f"a toy-world latent has {shapes} channels; got {channels}. Use the latent of CoRe² Toy Empty "
                     "Latent / a toy-world sampler, not an SD latent.")


def decode(latent, upscale: int = 1) -> torch.Tensor:
    """Toy latent (tensor or ComfyUI LATENT dict) of either world -> IMAGE [B, H, W, 3] in 0..1; upscale: an integer
    nearest-neighbour enlargement so that small pictures are visible on the canvas."""
    samples = latent["samples"] if isinstance(latent, dict) else latent
    if samples.ndim != 4:
        raise ValueError(f"a toy-world latent has shape [B, C, h, w]; got {list(samples.shape)}")
    images = pixels.to_images(samples, _patch_of_channels(samples.shape[1]))
    if upscale > 1:
        images = torch.nn.functional.interpolate(images, scale_factor=int(upscale), mode="nearest")
    return images.movedim(1, -1).contiguous()


def encode_image(image: torch.Tensor) -> torch.Tensor:
    """IMAGE [B, S, S, 3] -> the latent of the world whose pictures are S×S (exact; the toy worlds have no VAE)."""
    sizes = {w.resolution: w for w in WORLDS.values()}
    if image.ndim != 4 or image.shape[-1] != 3 or image.shape[1] not in sizes or image.shape[2] != image.shape[1]:
        raise ValueError("the toy worlds work on " + " or ".join(f"{r}×{r}" for r in sizes) +
                         f" RGB pictures; got an IMAGE of shape {list(image.shape)}")
    return pixels.to_latent(image.movedim(-1, 1).float(), sizes[image.shape[1]].patch)


def generate(prompts: list[str], cfg: float = DEFAULTS["cfg"], steps: int = DEFAULTS["steps"],
             sampler_name: str = DEFAULTS["sampler_name"], scheduler: str = DEFAULTS["scheduler"], seed: int = 0,
             model=None, negative: str = UNCOND_PROMPT, path: str | Path | None = None) -> torch.Tensor:
    """Pictures for prompts (one each, batched) through comfy.sample.sample: IMAGE [B, 32, 32, 3].

    `model` may be a patched ModelPatcher of the toy model (e.g. with CoRe² sampling attached)."""
    import comfy.sample

    model = model if model is not None else load_toy_model(path)
    latent = empty_latent(len(prompts), load(path).spec.name)
    noise = comfy.sample.prepare_noise(latent, seed)
    samples = comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, encode(prompts, path),
                                  encode(negative, path), latent, denoise=1.0, disable_pbar=True, seed=seed)
    return decode(samples)
