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
