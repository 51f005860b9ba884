"""What a ComfyUI MODEL is: family, latent channels, prediction space, identity. Works on 2024 and 2025 ComfyUI."""
from __future__ import annotations

import hashlib

import comfy.model_base as mb

_CONFIG_FAMILY = {"SD15": "sd15", "SDXL": "sdxl", "SSD1B": "sdxl", "Segmind_Vega": "sdxl", "KOALA_700M": "sdxl",
                  "KOALA_1B": "sdxl", "SD3": "sd3", "Flux": "flux", "FluxSchnell": "flux", "FluxInpaint": "flux"}

# models without a known config: the exact ComfyUI model class (subclasses are other families, see family())
_MODEL_CLASS_FAMILY = {"SDXL": "sdxl", "SD3": "sd3", "Flux": "flux"}


def base_model(model):
    """The BaseModel behind a ModelPatcher (or the BaseModel itself)."""
    return getattr(model, "model", model)


def family(model) -> str:
    """The model family a weak model is built for: sd15, sdxl, sd3, flux (FLUX.1), or for any other model its own
    name (the ComfyUI model config's class name, lower case: "flux2", "chroma", ...). Newer families built on the
    classes of supported ones (Flux2, Chroma and LongCat-Image derive from Flux) are named, never taken for their
    parent: their latents and conditioning differ, so a weak model for one does not fit the other."""
    m = base_model(model)
    cfg_name = type(getattr(m, "model_config", None)).__name__
    if cfg_name in _CONFIG_FAMILY:
        return _CONFIG_FAMILY[cfg_name]
    for cls_name, fam in _MODEL_CLASS_FAMILY.items():
        if type(m) is getattr(mb, cls_name, None):
            return fam
    if cfg_name != "NoneType":
        return cfg_name.lower()
    return type(m).__name__.lower() or "unknown"


def latent_channels(model) -> int:
    return int(base_model(model).latent_format.latent_channels)


def prediction(model) -> str:
    """'eps' for ε-prediction (SD1.5/SDXL), 'flow' for rectified flow (SD3, Flux), else the ModelType name."""
    t = base_model(model).model_type
    if t == mb.ModelType.EPS:
        return "eps"
    if t in (mb.ModelType.FLOW, getattr(mb.ModelType, "FLUX", None)):
        return "flow"
    return t.name.lower()


def identity(model, name: str | None = None) -> dict:
    """A fingerprint of the diffusion model's ARCHITECTURE: its name, family and "key_hash", a hash of its state-dict
    keys and shapes (not of the weights: reading every weight would cost seconds on each load). It tells SD1.5 from
    SDXL or a pruned variant; a fine-tune or merge of the same architecture has the same key_hash. (The name stays
    "key_hash" because datasets (base_model_hash) and weak-model files store it.)"""
    m = base_model(model)
    sd = m.diffusion_model.state_dict()
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(f"{k}:{tuple(sd[k].shape)};".encode())
    return {"name": name or getattr(m, "cached_name", None) or type(m.diffusion_model).__name__,
            "family": family(model), "key_hash": h.hexdigest()[:16]}


def latent_downscale(model) -> int:
    """Pixels per latent cell side, as ComfyUI's latent nodes count them (the latent format's ratio, else 8)."""
    lf = base_model(model).latent_format
    return int(getattr(lf, "spacial_downscale_ratio", 8) or 8)


def latent_size_limits(model) -> tuple[int | None, int | None]:
    """(exact, largest) latent side the model itself allows, None where it does not say: `exact` from a model config
    that declares `native_latent_size` (models trained at one size only, e.g. the toy worlds), `largest` from an
    MMDiT's position table (pos_embed_max_size × patch_size, SD3-style models)."""
    m = base_model(model)
    exact = getattr(getattr(m, "model_config", None), "native_latent_size", None)
    dm = getattr(m, "diffusion_model", None)
    pe_max, patch = getattr(dm, "pos_embed_max_size", None), getattr(dm, "patch_size", None)
    largest = int(pe_max) * int(patch) if pe_max and patch else None
    return (int(exact) if exact else None), largest


def size_problem(model, width: int, height: int) -> str | None:
    """Why width × height (pixels, as typed into a node) does not fit the model, with what to type; None if it fits."""
    down = latent_downscale(model)
    if width % down or height % down or width < 2 * down or height < 2 * down:
        return f"width and height must be multiples of {down}, at least {2 * down} (got {width}x{height})"
    h, w = height // down, width // down
    exact, largest = latent_size_limits(model)
    if exact and (h, w) != (exact, exact):
        return (f"this model makes {exact}x{exact} latents only; ComfyUI counts {down} pixels per latent cell, so set "
                f"width and height to {exact * down} (got {width}x{height}, a {h}x{w} latent)")
    if largest and max(h, w) > largest:
        return (f"this model's latents are at most {largest}x{largest}; set width and height to {largest * down} or "
                f"less (got {width}x{height})")
    return None
