"""Read, recognise, validate and load the released CoRe² weak-model weights (.pth or a safetensors conversion)."""
from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from .net import CONFIGS, NetConfig, PromptNet

log = logging.getLogger(__name__)

FORMAT = "core2-official"
_LORA_RE = re.compile(r"^proj_out\.lora\.(\d+)\.A$")
_BLOCK_RE = re.compile(r"^transformer_blocks\.(\d+)\.norm1\.weight$")


class OfficialWeightsError(ValueError):
    """The file is not (or not a complete) official CoRe² weak-model state dict."""


def is_official_state_dict(keys) -> str | None:
    """"sdxl" or "sd35" when `keys` look like an official weak-model state dict (key signature only), else None."""
    keys = set(keys)
    core = ("pos_embed.pos_embed", "pos_embed.proj.weight", "transformer_blocks.0.attn1.to_q.linear.weight",
            "transformer_blocks.0.attn1.to_q.lora.0.A", "trans_linear.linear.weight", "skip_connection.linear.weight",
            "pre8_linear2.0.linear.weight", "norm_out.linear.linear.weight")
    if not all(k in keys for k in core):
        return None
    return "sdxl" if "pool_prompt_linear.linear.weight" in keys else "sd35"


def read_state_dict(path: str | os.PathLike) -> tuple[dict, dict]:
    """(state dict on CPU, safetensors metadata or {}). `.safetensors` first; `.pth/.pt/.bin` with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CoRe² official weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            sd = {k: f.get_tensor(k) for k in f.keys()}
        return sd, meta
    if path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - the unpickler reports many kinds of error
            raise OfficialWeightsError(f"could not read {path.name} as a plain torch state dict "
                                       f"(weights_only=True): {e}") from e
        if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
            obj = obj["state_dict"]
        if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
            raise OfficialWeightsError(f"{path.name} does not hold a plain state dict of tensors")
        return dict(obj), {}
    raise OfficialWeightsError(f"unsupported weight file type '{path.suffix}' ({path.name}): use .safetensors or .pth")


def infer_config(sd: Mapping, variant: str) -> NetConfig:
    """The net size implied by the tensors (the released files give exactly net.SDXL / net.SD35)."""
    try:
        proj = sd["pos_embed.proj.weight"]
        head0 = sd["pre8_linear.0.linear.weight"]
        n_lora = 1 + max(int(m.group(1)) for k in sd if (m := _LORA_RE.match(k)))
        n_layers = 1 + max(int(m.group(1)) for k in sd if (m := _BLOCK_RE.match(k)))
        grid = math.isqrt(sd["pos_embed.pos_embed"].shape[1])
        pool = sd.get("pool_prompt_linear.linear.weight")
        inner = proj.shape[0]
        cfg = CONFIGS[variant].scaled(
            in_channels=proj.shape[1], num_layers=n_layers, text_dim=head0.shape[1], hidden=head0.shape[0],
            text_tokens=sd["skip_connection.linear.weight"].shape[1] - 1,
            pool_dim=pool.shape[1] if pool is not None else head0.shape[1], pool_linear=pool is not None,
            lora_rank=sd["proj_out.lora.0.A"].shape[1], n_lora=n_lora,
            heads=inner // 64 if inner % 64 == 0 else 1, head_dim=64 if inner % 64 == 0 else inner,
            patch_size=proj.shape[-1], pos_embed_max_size=grid)
    except (KeyError, ValueError, IndexError) as e:
        raise OfficialWeightsError(f"incomplete official CoRe² {variant} state dict ({e!r} missing or malformed)") from e
    return cfg


def check_state_dict(sd: Mapping, net: torch.nn.Module, what: str = "weights") -> None:
    """Raise OfficialWeightsError listing a few missing / unexpected / mis-shaped keys."""
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    shapes = [f"{k}: {tuple(sd[k].shape)} (expected {want[k]})" for k in want if k in sd and tuple(sd[k].shape) != want[k]]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:4])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:4])})")
        if shapes:
            parts.append(f"{len(shapes)} with the wrong shape (e.g. {'; '.join(shapes[:3])})")
        raise OfficialWeightsError(f"CoRe² official {what} do not match the official weak net: " + ", ".join(parts)
                                   + ". Use the unmodified sdxl_noise_model.pth / sd35_noise_model.pth from the HF repo "
                                   "sst12345/CoRe2 (or a conversion made with python -m core2.official.convert).")


def build_net(sd: Mapping, variant: str | None = None) -> PromptNet:
    """A PromptNet holding the tensors of `sd` (strict: every key used, every shape checked); no copies made."""
    variant = variant or is_official_state_dict(sd.keys())
    if variant is None:
        raise OfficialWeightsError("not an official CoRe² weak-model state dict (no pos_embed / LoRA-bank / trans_linear "
                                   "keys). Official files are sdxl_noise_model.pth and sd35_noise_model.pth.")
    cfg = infer_config(sd, variant)
    net = PromptNet(cfg, device="meta").requires_grad_(False)  # frozen: also accepts inference-mode tensors
    check_state_dict(sd, net, f"{variant} weights")
    net.load_state_dict(dict(sd), strict=True, assign=True)
    if (cfg.text_dim, cfg.text_tokens, cfg.lora_rank, cfg.n_lora) != tuple(
            getattr(CONFIGS[variant], a) for a in ("text_dim", "text_tokens", "lora_rank", "n_lora")):
        log.warning("CoRe² official %s weights with non-standard sizes: %s", variant, cfg)
    return net
