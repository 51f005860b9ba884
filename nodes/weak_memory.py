"""The weak model under ComfyUI's model management.

ComfyUI decides what fits in VRAM from the models it knows about. A weak model that just sits on the GPU is invisible
to it: small ones (a few MB) do not matter, but the official SDXL weak net is ~0.9 GB in bf16, enough to make the next
checkpoint load run out of memory on an 8 GB card. So, where ComfyUI supports it (ModelPatcher.set_additional_models,
2025+), the sampler hands ComfyUI the weak model as an additional model of the base model for the run: it is loaded
with the base model in the same memory budget, counted in VRAM, and offloaded when other models need the room, like
a ControlNet. Older ComfyUI (no such hook): the guider moves the weak model to the sampling device itself, as before.
"""
from __future__ import annotations

import torch

KEY = "core2_weak"


class WeakHolder(torch.nn.Module):
    """A plain container, so ComfyUI's ModelPatcher can set its bookkeeping attributes (device, …) on it and not on
    the weak model (the official weak model has a read-only `device`)."""

    def __init__(self, weak: torch.nn.Module):
        super().__init__()
        self.weak = weak


def supported(model_patcher) -> bool:
    return hasattr(model_patcher, "set_additional_models") and hasattr(model_patcher, "clone")


def weak_patcher(weak, model_patcher):
    """The weak model's own ModelPatcher (cached on the weak model, one per load/offload device pair), or None for
    weak models without weights (nothing to manage)."""
    if not isinstance(weak, torch.nn.Module) or next(weak.parameters(), None) is None:
        return None
    import comfy.model_patcher

    key = (str(model_patcher.load_device), str(model_patcher.offload_device))
    cache = weak.__dict__.setdefault("_core2_patchers", {})
    if key not in cache:
        cache[key] = comfy.model_patcher.ModelPatcher(WeakHolder(weak), load_device=model_patcher.load_device,
                                                      offload_device=model_patcher.offload_device)
    return cache[key]


def attach(model_patcher, weak):
    """The patcher to sample with: a clone of `model_patcher` that carries the weak model as an additional model,
    when this ComfyUI can; else `model_patcher` itself."""
    if weak is None or not supported(model_patcher):
        return model_patcher
    wp = weak_patcher(weak, model_patcher)
    if wp is None:
        return model_patcher
    mp = model_patcher.clone()
    mp.set_additional_models(KEY, [wp])
    return mp


__all__ = ["attach", "supported", "weak_patcher", "WeakHolder", "KEY"]
