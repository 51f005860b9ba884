"""The weak model under ComfyUI's model management.

ComfyUI decides what fits in VRAM from the models it knows about. A weak model that just sits on the GPU is invisible
to it: small ones (a few MB) do not matter, but the official SDXL weak net is ~0.9 GB in bf16, enough to make the next
checkpoint load run out of memory on an 8 GB card. So, where ComfyUI supports it (ModelPatcher.set_additional_models,
2025+), the sampler hands ComfyUI the weak model as an additional model of the base model for the run: it is loaded
with the base model in the same memory budget, counted in VRAM, and offloaded when other models need the room, like
a ControlNet. Older ComfyUI (no such hook): the guider moves the weak model to the sampling device itself, as before.

The weak model's patcher has the base model's patcher class (patcher_class): since early 2026 ComfyUI on a GPU loads
models with dynamic VRAM management (ModelPatcherDynamic as the core patcher), and one plain ModelPatcher in the same
load turns dynamic loading off for the whole load.
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


def patcher_class(model_patcher):
    """The class for the weak model's patcher: the base model's patcher class when it is one of ComfyUI's own
    (ModelPatcher, ModelPatcherDynamic, ...); for a third-party subclass (GGUF and the like, whose extra behaviour is
    about the base model's weights) the nearest of ComfyUI's own classes among its bases."""
    import comfy.model_patcher

    for cls in type(model_patcher).__mro__:
        if cls.__module__ == comfy.model_patcher.__name__ and issubclass(cls, comfy.model_patcher.ModelPatcher):
            return cls
    return comfy.model_patcher.ModelPatcher


def weak_patcher(weak, model_patcher):
    """The weak model's own patcher (cached on the weak model, one per patcher class and load/offload device pair),
    or None for weak models without weights (nothing to manage)."""
    if not isinstance(weak, torch.nn.Module) or next(weak.parameters(), None) is None:
        return None
    cls = patcher_class(model_patcher)
    key = (cls.__qualname__, str(model_patcher.load_device), str(model_patcher.offload_device))
    cache = weak.__dict__.setdefault("_core2_patchers", {})
    if key not in cache:
        cache[key] = cls(WeakHolder(weak), load_device=model_patcher.load_device,
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


__all__ = ["attach", "supported", "patcher_class", "weak_patcher", "WeakHolder", "KEY"]
