"""Cost of the CoRe² weak model against one SDXL UNet call (FLOPs and measured time).

FLOPs come from torch.utils.flop_counter.FlopCounterMode at the SDXL 1024² latent (128×128×4), for the UNet built
from ComfyUI's UNetModel with the real SDXL config (comfy/model_detection.py), on the meta device (no memory, random
init does not matter for counting). Times are wall-clock medians on this machine's device.

    python bench/weak_cost.py                       # FLOPs of both + weak-model time at 128×128
    python bench/weak_cost.py --time-unet 32        # also time the UNet at a 32×32 latent (needs ~11 GB RAM in fp32)
    python bench/weak_cost.py --device cuda --time-unet 128
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]  # run as a script: the repository root holds bench/ and tools/


def unet(device):
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    from bench.run import unet_configs

    return UNetModel(**unet_configs()["SDXL"], dtype=None, device=device, operations=comfy.ops.disable_weight_init).eval()


def unet_inputs(hw, device):
    import torch

    return (torch.randn(1, 4, hw, hw, device=device), torch.tensor([500.0], device=device),
            torch.randn(1, 77, 2048, device=device), torch.randn(1, 2816, device=device))


def weak(size, device):
    import torch

    from comfyui_core2.core2 import arch

    torch.manual_seed(0)
    m = arch.build(arch.make_config(size, 4, 2048, 1280, family="sdxl", prediction="eps")).to(device).eval()
    with torch.no_grad():  # random, non-zero head (a zero head would let the runtime skip nothing, but be explicit)
        m.head.weight.normal_(0, 0.01)
    return m


def weak_call(m, hw, device):
    import torch

    from comfyui_core2.core2.weak import PromptFeatures, StepInfo

    pf = lambda: PromptFeatures(torch.randn(1, 77, 2048), torch.randn(1, 1280))  # noqa: E731
    ctx = m.prepare(pf(), pf())  # once per sampling run, not per step
    rc, sigma = torch.randn(1, 4, hw, hw, device=device), torch.tensor([3.0], device=device)
    return lambda: m.predict(rc, sigma, 5.0, StepInfo(0, 30), ctx)


def set_attention(kind: str) -> None:
    """'basic': einsum/softmax attention (every matmul visible to the FLOP counter, works on meta tensors);
    'pytorch': scaled_dot_product_attention (what a real run uses; for timing)."""
    import comfy.ldm.modules.attention as at

    at.optimized_attention = at.attention_basic if kind == "basic" else at.attention_pytorch


def flops(fn) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    set_attention("basic")
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            fn()
    finally:
        set_attention("pytorch")
    return fc.get_total_flops()


def timed(fn, reps, device):
    import torch

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    with torch.no_grad():
        fn()
        sync()
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            sync()
            ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--time-unet", type=int, default=0, metavar="HW", help="time the SDXL UNet at an HW×HW latent")
    ap.add_argument("--time-weak-hw", type=int, default=128)
    a = ap.parse_args()
    from tools import comfy_env

    inst = comfy_env.activate()
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    comfy_env.load_pack()
    print(f"ComfyUI: {inst.describe()}; torch {torch.__version__}; device {a.device}; threads {torch.get_num_threads()}")

    u = unet("meta")
    n_unet = sum(p.numel() for p in u.parameters())
    x, t, c, y = unet_inputs(128, "meta")
    f_unet = flops(lambda: u(x, t, context=c, y=y))
    print(f"SDXL UNet: {n_unet / 1e9:.3f} B parameters, {f_unet / 1e12:.3f} TFLOPs per call at 128×128 (batch 1)")
    del u
    rows = []
    from comfyui_core2.core2.arch import SIZES

    for size in SIZES:
        m = weak(size, "cpu")
        n = sum(p.numel() for p in m.parameters())
        f = flops(weak_call(m, 128, "cpu"))
        m = m.to(a.device)
        dt = timed(weak_call(m, a.time_weak_hw, a.device), a.reps, a.device)
        rows.append((size, n, f, dt))
        print(f"weak {size:6s}: {n / 1e6:6.2f} M parameters, {f / 1e9:7.2f} GFLOPs at 128×128 = {100 * f / f_unet:.3f}% "
              f"of the UNet; {dt * 1e3:8.1f} ms per call at {a.time_weak_hw}×{a.time_weak_hw} on {a.device}")
    if a.time_unet:
        hw = a.time_unet
        u = unet(a.device)
        with torch.no_grad():
            for p in u.parameters():
                p.normal_(0, 0.02)
        x, t, c, y = unet_inputs(hw, a.device)
        dt_u = timed(lambda: u(x, t, context=c, y=y), max(1, a.reps // 2), a.device)
        f_u = flops(lambda: u(x, t, context=c, y=y))
        print(f"SDXL UNet at {hw}×{hw}: {f_u / 1e12:.3f} TFLOPs, {dt_u * 1e3:.0f} ms per call on {a.device}")
        for size, n, f, dt in rows:
            m = weak(size, a.device)
            dtw = timed(weak_call(m, hw, a.device), a.reps, a.device)
            print(f"  weak {size:6s} at {hw}×{hw}: {dtw * 1e3:8.1f} ms = {100 * dtw / dt_u:.2f}% of the UNet time")


if __name__ == "__main__":
    main()
