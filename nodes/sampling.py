"""Running a guider the way KSampler / KSamplerAdvanced do, with preview and progress; works without nodes.py.

ComfyUI's own common_ksampler cannot take a guider (comfy.sample.sample always builds a plain CFGGuider), so
run_ksampler follows its steps, each through ComfyUI's helper where the running core has it."""
from __future__ import annotations

import inspect

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import torch

try:
    import latent_preview  # ComfyUI's preview helper; absent in notcomfy
except ImportError:  # pragma: no cover - depends on the ComfyUI flavour
    latent_preview = None


def progress_callback(model, steps):
    """KSampler's preview + progress callback, or a plain ProgressBar where latent_preview is absent."""
    if latent_preview is not None:
        return latent_preview.prepare_callback(model, steps)
    pbar = comfy.utils.ProgressBar(steps)

    def callback(step, x0, x, total_steps):
        pbar.update_absolute(step + 1, total_steps)

    return callback


def full_schedule(model, steps, sampler_name, scheduler, denoise=1.0):
    return comfy.samplers.KSampler(model, steps=steps, device=model.load_device, sampler=sampler_name,
                                   scheduler=scheduler, denoise=denoise, model_options=model.model_options).sigmas


def window(sigmas, start_step=None, last_step=None, force_full_denoise=False):
    """The σ slice KSampler.sample runs for start/last steps; None when nothing is left to sample."""
    if last_step is not None and last_step < (len(sigmas) - 1):
        sigmas = sigmas[:last_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        if start_step < (len(sigmas) - 1):
            sigmas = sigmas[start_step:]
        else:
            return None
    return sigmas


_LATENT_RATIO_KEYS = ("downscale_ratio_spacial", "downscale_ratio_temporal")  # set by newer empty-latent nodes


def prepare_latent(model, latent):
    """KSampler's latent preparation: an empty latent gets the model's channel count and, on cores whose empty-latent
    nodes record the VAE downscale ratios (downscale_ratio_spacial/_temporal), the model's size."""
    latent_image = latent["samples"]
    fix = getattr(comfy.sample, "fix_empty_latent_channels", None)
    if fix is None:
        return latent_image
    ratios = [latent.get(k) for k in _LATENT_RATIO_KEYS]
    if any(r is not None for r in ratios) and len(inspect.signature(fix).parameters) >= 2 + len(ratios):
        return fix(model, latent_image, *ratios)
    return fix(model, latent_image)


def prepare_noise(latent, latent_image, seed, disable_noise):
    """KSampler's initial noise: ComfyUI's prepare_empty_noise / prepare_noise (zeros where no empty-noise helper)."""
    if disable_noise:
        if hasattr(comfy.sample, "prepare_empty_noise"):
            return comfy.sample.prepare_empty_noise(latent_image)
        return torch.zeros(latent_image.size(), dtype=latent_image.dtype, layout=latent_image.layout, device="cpu")
    return comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))


def to_intermediate(samples):
    """Where comfy.sample.sample leaves its result: the intermediate device (and dtype, on cores that have one)."""
    mm = comfy.model_management
    if hasattr(mm, "intermediate_dtype"):
        return samples.to(device=mm.intermediate_device(), dtype=mm.intermediate_dtype())
    return samples.to(mm.intermediate_device())


def run_ksampler(make_guider, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent,
                 denoise=1.0, disable_noise=False, start_step=None, last_step=None, force_full_denoise=False):
    """nodes.common_ksampler (ComfyUI's KSampler path, its feature-detected steps) with a guider of our own.
    make_guider(model, schedule) -> CFGGuider subclass."""
    latent_image = prepare_latent(model, latent)
    noise = prepare_noise(latent, latent_image, seed, disable_noise)
    schedule = full_schedule(model, steps, sampler_name, scheduler, denoise)
    sigmas = window(schedule, start_step, last_step, force_full_denoise)
    out = {k: v for k, v in latent.items() if k not in _LATENT_RATIO_KEYS}  # consumed, as common_ksampler does
    if sigmas is None:
        out["samples"] = latent_image
        return out
    guider = make_guider(model, schedule)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    sampler = comfy.samplers.sampler_object(sampler_name)
    samples = guider.sample(noise, latent_image, sampler, sigmas, denoise_mask=latent.get("noise_mask"),
                            callback=progress_callback(model, steps), disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
                            seed=seed)
    out["samples"] = to_intermediate(samples)
    return out
