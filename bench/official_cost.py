"""Per-call cost of the official CoRe² SDXL weak net next to an SDXL UNet, at 1024² (latent 128×128).

FLOPs are counted with torch.utils.flop_counter.FlopCounterMode on `meta` builds (no weights, no memory):
  python bench/official_cost.py [--latent 128] [--time]    (--time: also wall-clock on real random weights, slow on CPU)
The UNet is ComfyUI's own UNetModel built from the SDXL config in comfy/model_detection.py.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools import comfy_env  # noqa: E402

log = logging.getLogger("official_cost")


def count(fn) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def sdxl_unet_config(dtype):
    """The SDXL dict of comfy.model_detection.unet_config_from_diffusers_unet (kept in sync by reading it)."""
    import inspect
    import re

    import comfy.model_detection as md

    src = inspect.getsource(md.unet_config_from_diffusers_unet)
    m = re.search(r"SDXL = (\{.*?\})\n", src, re.S)
    return eval(m.group(1), {"dtype": dtype})  # noqa: S307 - ComfyUI's own literal


def use_sdpa_attention():
    """ComfyUI picks sub-quadratic attention on CPU, which queries free memory (not possible on meta): use SDPA."""
    import comfy.ldm.modules.attention as att

    att.optimized_attention = att.attention_pytorch
    if hasattr(att, "optimized_attention_masked"):
        att.optimized_attention_masked = att.attention_pytorch


def unet_flops(latent: int, batch: int) -> int:
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    import comfy.ops

    use_sdpa_attention()

    cfg = sdxl_unet_config(torch.float32)
    unet = UNetModel(**cfg, device="meta", operations=comfy.ops.disable_weight_init)
    x = torch.empty(batch, 4, latent, latent, device="meta")
    t = torch.empty(batch, device="meta")
    ctx = torch.empty(batch, 77, 2048, device="meta")
    y = torch.empty(batch, 2816, device="meta")
    params = sum(p.numel() for p in unet.parameters())
    f = count(lambda: unet(x, timesteps=t, context=ctx, y=y))
    return f, params


def sd35_weak_flops(latent: int) -> int:
    """The SD3.5 weak net (8 blocks, 16 channels), steady state (LoRA merged)."""
    from core2.official import SD35, PromptNet

    net = PromptNet(SD35, device="meta")
    args = (torch.empty(1, 16, latent, latent, device="meta"), torch.empty(1, 64, 666, device="meta"),
            torch.empty(1, 64, device="meta"), torch.empty(1, 64, 4096, device="meta"), torch.empty(1, 4096, device="meta"))
    count(lambda: net(*args))  # first call merges
    return count(lambda: net(*args))


def weak_flops(latent: int):
    from core2.official import SDXL, PromptNet
    from core2.official.lora import set_active_lora, set_merge_policy

    net = PromptNet(SDXL, device="meta")
    s, v, d = (torch.empty(1, 64, 154, device="meta"), torch.empty(1, 64, device="meta"),
               torch.empty(1, 64, 2048, device="meta"))
    p, n = torch.empty(1, 2560, device="meta"), torch.empty(1, 4, latent, latent, device="meta")
    out = {}
    set_active_lora(net, None)
    out["base (no LoRA)"] = count(lambda: net(n, s, v, d, p))
    set_merge_policy(net, "never")
    set_active_lora(net, 3)
    out["LoRA unmerged"] = count(lambda: net(n, s, v, d, p))
    set_merge_policy(net, "auto")
    out["auto: first call at a new LoRA index (merge included)"] = count(lambda: net(n, s, v, d, p))
    out["auto: further calls at that index"] = count(lambda: net(n, s, v, d, p))
    terms = net.prompt_terms(s, v, d, p)
    out["auto: noise path only (prompt terms cached per index, as predict() does)"] = count(lambda: net.denoise(n, terms))
    base = sum(t.numel() for k, t in net.state_dict().items() if ".lora." not in k and k != "pos_embed.pos_embed")
    return out, base


def wall_clock(latent: int, device: str, dtype) -> dict:
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    import comfy.ops

    from core2.official import SDXL, PromptNet
    from core2.official.lora import set_active_lora

    use_sdpa_attention()
    res = {}
    net = PromptNet(SDXL.scaled(n_lora=2), device=device, dtype=dtype)  # 2 LoRAs: same per-call work, less memory
    set_active_lora(net, 1)
    s, v, d = (torch.randn(1, 64, 154, device=device, dtype=dtype), torch.rand(1, 64, device=device, dtype=dtype),
               torch.randn(1, 64, 2048, device=device, dtype=dtype))
    p, n = torch.randn(1, 2560, device=device, dtype=dtype), torch.randn(1, 4, latent, latent, device=device, dtype=dtype)
    terms = net.prompt_terms(s, v, d, p)
    unet = UNetModel(**sdxl_unet_config(dtype), device=device, operations=comfy.ops.manual_cast
                     if dtype != torch.float32 else comfy.ops.disable_weight_init).to(device, dtype)

    def timeit(fn, reps=5):
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / reps

    with torch.no_grad():
        res["weak net (noise path, merged)"] = timeit(lambda: net.denoise(n, terms))
        for b in (1, 2):
            x = torch.randn(b, 4, latent, latent, device=device, dtype=dtype)
            res[f"SDXL UNet batch {b}"] = timeit(lambda: unet(x, timesteps=torch.full((b,), 500.0, device=device),
                                                               context=torch.randn(b, 77, 2048, device=device, dtype=dtype),
                                                               y=torch.randn(b, 2816, device=device, dtype=dtype)))
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latent", type=int, default=128)
    ap.add_argument("--time", action="store_true", help="also measure wall-clock (CUDA if available)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    inst = comfy_env.activate()
    log.info("ComfyUI: %s; latent %d×%d (%d px)", inst.describe(), a.latent, a.latent, a.latent * 8)
    weak, base_params = weak_flops(a.latent)
    u1, unet_params = unet_flops(a.latent, 1)
    u2, _ = unet_flops(a.latent, 2)
    log.info("SDXL UNet: %.0f M params; %.1f GFLOP per call at batch 1 (cond only), %.1f GFLOP at batch 2 (CFG)",
             unet_params / 1e6, u1 / 1e9, u2 / 1e9)
    log.info("CoRe² SDXL weak net: %.1f M active base params (+6.81 M per LoRA)", base_params / 1e6)
    for k, f in weak.items():
        log.info("  weak net, %s: %.2f GFLOP = %.2f%% of a batch-1 UNet call", k, f / 1e9, 100 * f / u1)
    log.info("CoRe² SD3.5 weak net (merged LoRA): %.2f GFLOP per call", sd35_weak_flops(a.latent) / 1e9)
    if a.time:
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if dev == "cuda" else torch.float32
        for k, t in wall_clock(a.latent, dev, dtype).items():
            log.info("  wall-clock %s (%s, %s): %.2f ms", k, dev, dtype, 1000 * t)


if __name__ == "__main__":
    main()
