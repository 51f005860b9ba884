"""CoRe² Compare and CoRe² Grid Image: CFG and CoRe² settings side by side, with model passes and seconds.

CoRe² Compare samples one latent batch per row from the same seed: CFG (optional), then every slow_steps × w2s_scale
pair, each through the CoRe² KSampler's own path (run_ksampler; the CFG row is the CoRe² guider with every step slow
and w2s_scale 1, which is ComfyUI's CFG bit for bit). Decode its LATENT with any decoder and give the pictures to
CoRe² Grid Image with its GRID: one labelled row per setting, one column per picture of the batch, and under each
picture the model passes it took and its seconds (the row's sampling time divided by its pictures).
"""
from __future__ import annotations

import time

import comfy.model_management
import comfy.samplers
import numpy as np
import torch

from ..core2 import fillins
from ..core2 import grid as core2_grid
from .refine import _core2_inputs, _factory
from . import weak_memory
from .sampling import run_ksampler

GRID = "CORE2_GRID"
CATEGORY = "CoRe²/sampling"


def _row(model, weak, w2s, slow, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent):
    """One row: (latent samples, model passes per picture or None, seconds)."""
    made = []
    base = _factory(steps, scheduler, weak, w2s, slow, "core", -1, 0.5)

    def make(m, schedule):
        made.append(base(m, schedule))
        return made[-1]

    t0 = time.perf_counter()
    out = run_ksampler(make, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent)
    seconds = time.perf_counter() - t0
    stats = made[-1].stats if made else None
    return out["samples"], (stats.model_passes if stats is not None else None), seconds


def preload(model, weak) -> None:
    """Load the MODEL (and a weak model ComfyUI manages) before the first row is timed, so that no row's seconds
    include loading them (on a GPU a cold load takes seconds)."""
    models = [model]
    if weak_memory.supported(model):
        wp = weak_memory.weak_patcher(weak, model)
        models += [wp] if wp is not None else []
    comfy.model_management.load_models_gpu(models)


def settings_rows(include_cfg: bool, slow_list: list[int], w2s_list: list[float], cfg: float):
    """[(label, weak-or-None, w2s, slow)]: CFG first (weak None: plain CFG), then slow_steps × w2s_scale."""
    rows = [(f"CFG (cfg {cfg:g})", None, 1.0, None)] if include_cfg else []
    rows += [(f"CoRe² {s} slow, w2s {w:g}", "weak", w, s) for s in slow_list for w in w2s_list]
    return rows


class CoRe2Compare:
    DESCRIPTION = ("Samples the same seed with CFG and with several CoRe² settings (every slow_steps × w2s_scale pair), "
                   "one row each, and counts the model passes and seconds of each. Decode the LATENT and connect it "
                   "with the GRID to CoRe² Grid Image for a labelled picture.")

    @classmethod
    def INPUT_TYPES(cls):
        core = _core2_inputs()
        return {"required": {
            "model": ("MODEL",),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "control_after_generate": True}),
            "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
            "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
            "sampler_name": (comfy.samplers.KSampler.SAMPLERS,),
            "scheduler": (comfy.samplers.KSampler.SCHEDULERS,),
            "positive": ("CONDITIONING",),
            "negative": ("CONDITIONING",),
            "latent_image": ("LATENT",),
            "weak_model": core["weak_model"],
            "slow_steps": ("STRING", {"default": "3, 10", "tooltip": "Comma-separated slow_steps values, one row "
                                      "each (with every w2s_scale)."}),
            "w2s_scale": ("STRING", {"default": "1.5", "tooltip": "Comma-separated w2s_scale values, one row each "
                                     "(with every slow_steps)."}),
            "include_cfg": ("BOOLEAN", {"default": True, "tooltip": "A first row of plain CFG (2 passes a step)."}),
        }}

    RETURN_TYPES = ("LATENT", GRID, "STRING")
    RETURN_NAMES = ("latent", "grid", "summary")
    OUTPUT_TOOLTIPS = ("Every row's pictures, row after row: decode them for CoRe² Grid Image.",
                       "Row labels and captions for CoRe² Grid Image.", "One line per row: passes and seconds.")
    FUNCTION = "compare"
    CATEGORY = CATEGORY

    def compare(self, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, weak_model,
                slow_steps, w2s_scale, include_cfg=True):
        rows = settings_rows(include_cfg, core2_grid.parse_list(slow_steps, int, "slow_steps"),
                             core2_grid.parse_list(w2s_scale, float, "w2s_scale"), cfg)
        if any(s < 0 for _, _, _, s in rows if s is not None):
            raise ValueError(f"slow_steps: '{slow_steps}' has a negative value; use 0 (all fast) or more.")
        batch = int(latent_image["samples"].shape[0])
        preload(model, weak_model)
        samples, captions, lines = [], [], []
        for label, weak, w2s, slow in rows:
            weak = weak_model if weak else fillins.CondOnlyFill()  # CFG row: all slow, w2s 1 = CFG; the weak model unused
            out, passes, seconds = _row(model, weak, w2s, slow, seed, steps, cfg, sampler_name, scheduler, positive,
                                        negative, latent_image)
            samples.append(out)
            cap = f"{passes} passes, {seconds / batch:.2f} s" if passes is not None else "not sampled"
            captions.append([cap] * batch)
            lines.append(f"{label}: {cap}" + (f" per picture ({seconds:.2f} s for {batch})" if batch > 1 else ""))
        spec = core2_grid.GridSpec([r[0] for r in rows], batch, captions,
                             f"{steps} steps, {sampler_name} / {scheduler}, seed {seed}")
        out = {k: v for k, v in latent_image.items() if k not in ("samples", "batch_index", "noise_mask")}
        out["samples"] = torch.cat(samples, dim=0)
        return (out, spec, "\n".join(lines))


class CoRe2GridImage:
    DESCRIPTION = ("Draws the pictures of a CoRe² Compare run as a labelled grid: one row per setting, the model "
                   "passes and seconds under each picture.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE", {"tooltip": "The decoded LATENT of CoRe² Compare."}),
                             "grid": (GRID, {"tooltip": "The GRID output of the same CoRe² Compare node."})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "draw"
    CATEGORY = CATEGORY

    def draw(self, images, grid):
        img = core2_grid.draw(images.detach().cpu().float().numpy(), grid)
        return (torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None],)


NODE_CLASS_MAPPINGS = {"CoRe2Compare": CoRe2Compare, "CoRe2GridImage": CoRe2GridImage}
NODE_DISPLAY_NAME_MAPPINGS = {"CoRe2Compare": "CoRe² Compare (CFG vs CoRe² settings)",
                              "CoRe2GridImage": "CoRe² Grid Image"}
