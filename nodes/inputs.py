"""Input options shared by the nodes: KSampler's own tooltips, seeds that stay put, advanced widgets, hidden ids."""
from __future__ import annotations

# ComfyUI's KSampler tooltips (nodes.py), word for word, for the inputs the CoRe² samplers share with it.
KSAMPLER_TOOLTIPS = {
    "model": "The model used for denoising the input latent.",
    "seed": "The random seed used for creating the noise.",
    "noise_seed": "The random seed used for creating the noise.",
    "steps": "The number of steps used in the denoising process.",
    "cfg": "The Classifier-Free Guidance scale balances creativity and adherence to the prompt. Higher values result "
           "in images more closely matching the prompt however too high values will negatively impact quality.",
    "sampler_name": "The algorithm used when sampling, this can affect the quality, speed, and style of the generated "
                    "output.",
    "scheduler": "The scheduler controls how noise is gradually removed to form the image.",
    "positive": "The conditioning describing the attributes you want to include in the image.",
    "negative": "The conditioning describing the attributes you want to exclude from the image.",
    "latent_image": "The latent image to denoise.",
    "denoise": "The amount of denoising applied, lower values will maintain the structure of the initial image allowing "
               "for image to image sampling.",
}

# A seed that stays what the user typed. ComfyUI's frontend gives every INT input named "seed" a
# control_after_generate widget set to "randomize" unless the input sets control_after_generate itself; False (read
# with ?? by the frontend) leaves the widget out. For Collect Batch, Reflect and the prompt list a new seed means
# new data: a randomized seed would collect new trajectories on every queue, so a rerun would never resume.
FIXED_SEED = {"control_after_generate": False}

# Widgets that act only in some settings: frontends with "advanced" widgets (ComfyUI frontend 1.3x and later) keep
# them under the node's "Show Advanced" menu; older ones show them as usual.
ADVANCED = {"advanced": True}

HIDDEN = {"hidden": {"unique_id": "UNIQUE_ID"}}  # INPUT_TYPES entry: ComfyUI passes the node's id as unique_id


def with_tooltip(spec: tuple, name: str) -> tuple:
    """An input spec (type, options) with KSampler's tooltip for `name` added (its own tooltip, if any, wins)."""
    opts = dict(spec[1]) if len(spec) > 1 else {}
    opts.setdefault("tooltip", KSAMPLER_TOOLTIPS[name])
    return (spec[0], opts)
