"""Running a guider the way KSampler / KSamplerAdvanced do, with preview and progress; works without nodes.py."""
from __future__ import annotations

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


def run_ksampler(make_guider, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent,
                 denoise=1.0, disable_noise=False, start_step=None, last_step=None, force_full_denoise=False):
    """nodes.common_ksampler with a guider of our own. make_guider(model, schedule) -> CFGGuider subclass."""
    latent_image = latent["samples"]
    if hasattr(comfy.sample, "fix_empty_latent_channels"):
        latent_image = comfy.sample.fix_empty_latent_channels(model, latent_image)
    if disable_noise:
        noise = torch.zeros(latent_image.size(), dtype=latent_image.dtype, layout=latent_image.layout, device="cpu")
    else:
        noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    schedule = full_schedule(model, steps, sampler_name, scheduler, denoise)
    sigmas = window(schedule, start_step, last_step, force_full_denoise)
    out = latent.copy()
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
    out["samples"] = samples.to(comfy.model_management.intermediate_device())
    return out
