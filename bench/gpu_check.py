"""GPU check: CoRe² at full size on a CUDA GPU, in one command (a few minutes on a large GPU).

    python bench/gpu_check.py                       # SDXL-size and SD3.5-Large-size models, fp16 and bf16, 1024²
    python bench/gpu_check.py --dtypes bf16 --families sdxl --steps 10
    python bench/gpu_check.py --smoke               # tiny models on the CPU: checks the script itself (seconds)

Models: ComfyUI's own model classes built from the real configs (SDXL: the UNet config in the running ComfyUI's
comfy/model_detection.py; SD3: an SD3.5-Large-size MMDiT, depth 38) with random weights, loaded through ComfyUI's model
management with its core patcher class (comfy.model_patcher.CoreModelPatcher), as checkpoint loaders do. Dynamic VRAM
(ModelPatcherDynamic, ComfyUI 2026) is switched on the way main.py does when comfy_aimdo is installed.

For every family × dtype, at a 1024² picture (latent 128²), euler, `--steps` steps, medians of `--reps` runs:
  * CFG step time (ComfyUI's KSampler path, plain CFG) and fast step time (CoRe² KSampler, every step fast: one
    conditional pass + the weak model), and their ratio;
  * the weak model's share of a fast step (its own time, CUDA-synchronised, over the step's);
  * peak VRAM of a CFG run without the weak model and of CoRe² runs with it (torch.cuda.max_memory_allocated);
  * dynamic VRAM: the base and weak patcher classes, and whether every load_models_gpu call of a CoRe² run held only
    dynamic patchers (one plain patcher turns dynamic loading off for the whole load).
Writes bench/results/gpu_check.json (or --out) and prints one line per row. Without CUDA (and without --smoke) it
stops at once with a message saying so.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: the repository root holds bench/, tools/ and testkit/
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# SD3.5 Large (comfy/model_detection.py reads these from the checkpoint): depth 38, hidden 64·38, RMS qk-norm
SD3_LARGE = dict(in_channels=16, out_channels=16, patch_size=2, depth=38, adm_in_channels=2048,
                 context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 4096,
                                                                                  "out_features": 64 * 38}},
                 pos_embed_max_size=192, num_patches=36864, pos_embed_scaling_factor=None, qk_norm="rms",
                 x_block_self_attn_layers=[])
COND = {"sdxl": dict(tokens=77, token_dim=2048, pooled_dim=1280, channels=4, prediction="eps"),
        "sd3": dict(tokens=154, token_dim=4096, pooled_dim=2048, channels=16, prediction="flow")}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny models on the CPU, fp32, 8² latent, 2 steps, small weak "
                    "model (checks the script)")
    ap.add_argument("--families", default="sdxl,sd3")
    ap.add_argument("--dtypes", default="fp16,bf16")
    ap.add_argument("--size", type=int, default=1024, help="picture side in pixels (latent = size / 8)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--weak-size", default="medium", choices=("small", "medium", "large"))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu_check.json")
    a = ap.parse_args(argv)
    if a.smoke:
        a.dtypes, a.size, a.steps, a.reps, a.weak_size = "fp32", 64, 2, 1, "small"
    return a


def require_device(smoke: bool) -> None:
    if smoke:
        return
    if not torch.cuda.is_available():
        sys.exit(f"bench/gpu_check.py needs a CUDA GPU: torch {torch.__version__} sees none "
                 f"(torch.cuda.is_available() is False). Run it on a GPU machine, or use --smoke for a CPU check "
                 f"of the script itself.")


def activate_comfy(smoke: bool):
    """Import ComfyUI (tools/comfy_env.py) on the CPU (--smoke) or the GPU, and the pack."""
    os.environ["CORE2_TEST_DEVICE"] = "cpu" if smoke else "cuda"
    from tools import comfy_env

    inst = comfy_env.activate()
    comfy_env.load_pack()
    import comfy.utils

    comfy.utils.PROGRESS_BAR_ENABLED = False  # one line per row, not a progress bar per run
    return inst


def enable_dynamic_vram() -> str:
    """Switch ComfyUI's core patcher to ModelPatcherDynamic as main.py does; say what happened."""
    import comfy.model_management as mm
    import comfy.model_patcher as mp

    if not hasattr(mp, "ModelPatcherDynamic"):
        return "not in this ComfyUI (no ModelPatcherDynamic)"
    if mm.is_device_cpu(mm.get_torch_device()):
        return "off: CPU run (ComfyUI uses plain patchers on the CPU)"
    try:
        import comfy.memory_management
        import comfy_aimdo.control
    except ImportError as e:
        return f"off: {e.name} is not installed"
    devices = mm.get_all_torch_devices() if hasattr(mm, "get_all_torch_devices") else [mm.get_torch_device()]
    try:
        ok = comfy_aimdo.control.init_devices((d.index, 0) for d in devices)
    except TypeError:  # comfy-aimdo 0.4.9 protocol
        ok = comfy_aimdo.control.init_devices(d.index for d in devices)
    if not ok:
        return "off: comfy_aimdo.control.init_devices failed"
    mp.CoreModelPatcher = mp.ModelPatcherDynamic
    comfy.memory_management.aimdo_enabled = True
    return "on"


def build_base(family: str, dtype: torch.dtype, smoke: bool):
    """(patcher, positive, negative) for an SDXL- or SD3-size model with random weights."""
    import comfy.model_management as mm
    import comfy.model_patcher as mp
    import comfy.supported_models as sm

    if smoke:
        from testkit import tiny_models

        tm = tiny_models.BUILDERS[family]()
        return tm.patcher, tm.positive, tm.negative
    if family == "sdxl":
        from bench.run import unet_configs

        cfg = sm.SDXL(dict(unet_configs()["SDXL"]))
    else:
        cfg = sm.SD3(dict(SD3_LARGE))
    cfg.set_inference_dtype(dtype, None)
    model = cfg.get_model({})
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.diffusion_model.parameters():
            p.copy_((torch.randn(p.shape, generator=g) * 0.02).to(p.dtype))
    core = getattr(mp, "CoreModelPatcher", mp.ModelPatcher)  # CoreModelPatcher: 2026 cores; ModelPatcher before
    patcher = core(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
    c = COND[family]

    def cond(seed):
        gg = torch.Generator().manual_seed(seed)
        extra = {"pooled_output": torch.randn(1, c["pooled_dim"], generator=gg)}
        if family == "sdxl":
            extra.update(width=1024, height=1024, crop_w=0, crop_h=0, target_width=1024, target_height=1024)
        return [[torch.randn(1, c["tokens"], c["token_dim"], generator=gg), extra]]

    return patcher, cond(1), cond(2)


def build_weak(family: str, size: str, device):
    from comfyui_core2.core2 import arch

    c = COND[family]
    w = arch.build(arch.make_config(size, c["channels"], c["token_dim"], c["pooled_dim"], family=family,
                                    prediction=c["prediction"], x_input=True)).eval()
    with torch.no_grad():
        w.head.weight.normal_(0, 0.01)  # a trained head is not zero: make the weak model do its full work
    return w


class Timer:
    """Wraps weak.predict: CUDA-synchronised time spent in the weak model."""

    def __init__(self, weak, cuda: bool):
        self.weak, self.cuda, self.seconds, self.calls = weak, cuda, 0.0, 0
        self._orig = weak.predict

        def timed(*args, **kwargs):
            self.sync()
            t = time.perf_counter()
            out = self._orig(*args, **kwargs)
            self.sync()
            self.seconds += time.perf_counter() - t
            self.calls += 1
            return out

        weak.predict = timed

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()


class LoadRecorder:
    """Records, for every comfy.model_management.load_models_gpu call, the patcher classes and their is_dynamic()."""

    def __init__(self):
        import comfy.model_management as mm

        self.mm, self.calls, self._orig = mm, [], mm.load_models_gpu

        def recording(models, *args, **kwargs):
            self.calls.append([(type(m).__name__, bool(getattr(m, "is_dynamic", lambda: False)())) for m in models])
            return self._orig(models, *args, **kwargs)

        mm.load_models_gpu = recording

    def close(self):
        self.mm.load_models_gpu = self._orig


def run_sampler(patcher, pos, neg, latent, steps, weak=None, slow_steps=None, seed=0):
    """One sampling run: plain CFG through ComfyUI's KSampler path (weak None) or the CoRe² KSampler."""
    import comfy.sample

    from comfyui_core2.nodes import refine

    if weak is None:
        import comfy.samplers

        noise = comfy.sample.prepare_noise(latent, seed)
        return comfy.sample.sample(patcher, noise, steps, 5.0, "euler", "normal", pos, neg, latent, seed=seed,
                                   disable_pbar=True)
    (out,) = refine.CoRe2KSampler().sample(patcher, seed, steps, 5.0, "euler", "normal", pos, neg, {"samples": latent},
                                           1.0, weak, 1.5, slow_steps)
    return out["samples"]


def timed_runs(fn, reps: int, cuda: bool) -> tuple[float, float | None]:
    """(median seconds of `reps` runs after one warm-up, peak VRAM in GiB over the timed runs or None on CPU)."""
    fn()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None
    return statistics.median(times), peak


def check_row(family: str, dtype_name: str, a, cuda: bool) -> dict:
    """All figures for one family × dtype."""
    import comfy.model_management as mm

    from comfyui_core2.nodes import weak_memory

    patcher, pos, neg = build_base(family, DTYPES[dtype_name], a.smoke)
    weak = build_weak(family, a.weak_size, patcher.load_device)
    hw = a.size // 8
    latent = torch.zeros(1, COND[family]["channels"], hw, hw)
    cfg_s, cfg_peak = timed_runs(lambda: run_sampler(patcher, pos, neg, latent, a.steps), a.reps, cuda)
    rec, timer = LoadRecorder(), Timer(weak, cuda)
    try:
        fast_s, fast_peak = timed_runs(lambda: run_sampler(patcher, pos, neg, latent, a.steps, weak, 0), a.reps, cuda)
        weak_share = timer.seconds / max(timer.calls, 1) / (fast_s / a.steps)
        mixed_s, mixed_peak = timed_runs(lambda: run_sampler(patcher, pos, neg, latent, a.steps, weak, a.steps // 2),
                                         a.reps, cuda)
    finally:
        rec.close()
    wp = weak_memory.weak_patcher(weak, patcher)
    core2_loads = [c for c in rec.calls if len(c) > 1]  # loads that carried the weak model with the base model
    row = {"family": family, "dtype": dtype_name, "latent": [COND[family]["channels"], hw, hw], "steps": a.steps,
           "reps": a.reps, "cfg_step_s": cfg_s / a.steps, "fast_step_s": fast_s / a.steps,
           "fast_over_cfg_step": (fast_s / a.steps) / (cfg_s / a.steps), "half_slow_step_s": mixed_s / a.steps,
           "weak_share_of_fast_step": weak_share, "weak_parameters": sum(p.numel() for p in weak.parameters()),
           "peak_vram_gib_cfg_no_weak": cfg_peak, "peak_vram_gib_core2_all_fast": fast_peak,
           "peak_vram_gib_core2_half_slow": mixed_peak, "base_patcher": type(patcher).__name__,
           "weak_patcher": type(wp).__name__ if wp is not None else None,
           "base_is_dynamic": bool(getattr(patcher, "is_dynamic", lambda: False)()),
           "load_calls": rec.calls,
           "dynamic_stays_on": bool(core2_loads) and all(d for call in core2_loads for _, d in call)}
    del patcher, weak
    mm.unload_all_models()
    mm.soft_empty_cache()
    return row


def describe(row: dict) -> str:
    vram = ""
    if row["peak_vram_gib_cfg_no_weak"] is not None:
        vram = (f", peak VRAM {row['peak_vram_gib_cfg_no_weak']:.2f} GiB CFG / "
                f"{row['peak_vram_gib_core2_all_fast']:.2f} GiB CoRe² (weak model)")
    return (f"{row['family']} {row['dtype']} latent {row['latent']}: CFG step {row['cfg_step_s']:.3f} s, fast step "
            f"{row['fast_step_s']:.3f} s, fast/CFG {row['fast_over_cfg_step']:.3f}, weak model "
            f"{100 * row['weak_share_of_fast_step']:.2f}% of a fast step{vram}; patchers {row['base_patcher']} / "
            f"{row['weak_patcher']}, dynamic VRAM on the base: {row['base_is_dynamic']}, "
            f"stays on with the weak model: {row['dynamic_stays_on']}")


def main(argv=None) -> int:
    a = parse_args(argv)
    require_device(a.smoke)
    inst = activate_comfy(a.smoke)
    torch.manual_seed(0)
    dynamic = enable_dynamic_vram()
    cuda = not a.smoke
    env = {"comfyui": inst.describe(), "torch": torch.__version__, "python": platform.python_version(),
           "device": torch.cuda.get_device_name() if cuda else "cpu", "dynamic_vram": dynamic, "smoke": a.smoke}
    print(f"gpu_check: {env['comfyui']}; {env['device']}; dynamic VRAM {dynamic}", flush=True)
    rows = []
    for family in a.families.split(","):
        for dtype_name in a.dtypes.split(","):
            row = check_row(family.strip(), dtype_name.strip(), a, cuda)
            print(describe(row), flush=True)
            rows.append(row)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"environment": env, "rows": rows}, indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
