"""Released CoRe² weak models (xie-lab-ml/CoRe, HF sst12345/CoRe2) in plain torch: no diffusers.

    from core2.official import is_official_state_dict, load_official, compatibility_warnings
    weak = load_official("models/core2/sdxl_noise_model.pth", device="cuda")   # → OfficialWeakModel (a WeakModel)
    ctx = weak.prepare(positive_features, negative_features)
    guided = weak.predict(eps_cond, sigma, cfg, StepInfo(i, n), ctx)
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from .compat import compatibility_warnings
from .loader import FORMAT, OfficialWeightsError, build_net, is_official_state_dict, read_state_dict
from .model import OfficialWeakModel, default_input_dtype
from .net import SD35, SDXL, NetConfig, PromptNet

log = logging.getLogger(__name__)


def load_official(path_or_state_dict, device=None, dtype=None, lora_index_mode: str = "official") -> OfficialWeakModel:
    """Load an official weak model strictly from a `.pth`/`.safetensors` file or an already-read state dict.

    device: where it runs (default CPU). dtype: weights and net inputs (default bf16 on CUDA as the official code,
    fp32 elsewhere). Raises OfficialWeightsError (a ValueError) for files that are not official weak models.
    """
    source = None
    with torch.inference_mode(False), torch.no_grad():
        if isinstance(path_or_state_dict, Mapping):
            sd, meta = path_or_state_dict, {}
        else:
            source = Path(path_or_state_dict).name
            sd, meta = read_state_dict(path_or_state_dict)
        variant = is_official_state_dict(sd.keys())
        if meta.get("format") == FORMAT and meta.get("variant") not in (None, variant):
            raise OfficialWeightsError(f"{source}: metadata says variant {meta.get('variant')!r}, keys say {variant!r}")
        net = build_net(sd, variant)
        device = torch.device(device) if device is not None else torch.device("cpu")
        dtype = dtype or default_input_dtype(device)
        net = net.to(device=device, dtype=dtype).eval()
    log.info("CoRe² official %s weak model loaded (%s, %s, %s)", net.cfg.variant, source or "state dict", device, dtype)
    return OfficialWeakModel(net, lora_index_mode=lora_index_mode, source=source).eval()


__all__ = ["is_official_state_dict", "load_official", "compatibility_warnings", "OfficialWeakModel",
           "OfficialWeightsError", "PromptNet", "NetConfig", "SDXL", "SD35", "read_state_dict", "FORMAT"]
