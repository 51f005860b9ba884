"""Tiny diffusion models built from ComfyUI's own model classes, for tests.

Each builder returns a TinyModel: a ComfyUI ModelPatcher on CPU (deterministic, explicitly initialised
weights: ComfyUI's ops leave weights uninitialised), and positive/negative CONDITIONING with the same
structure ComfyUI's text encoders produce for that family.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass
class TinyModel:
    family: str
    patcher: object  # comfy.model_patcher.ModelPatcher
    positive: list
    negative: list
    latent_channels: int
    calls: list = field(default_factory=list)  # batch size of every diffusion-model forward

    def empty_latent(self, batch=1, h=16, w=16):
        return torch.zeros(batch, self.latent_channels, h, w)

    def reset_calls(self):
        self.calls.clear()

    @property
    def samples_evaluated(self) -> int:
        return sum(self.calls)


def init_weights(module: torch.nn.Module, seed: int = 0, out_gain: float = 1.0) -> None:
    """Deterministic fan-in init for every parameter and floating buffer."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in list(module.named_parameters()) + list(module.named_buffers()):
            if not p.is_floating_point():
                continue
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
            elif name.endswith("weight") and ("norm" in name or "ln" in name):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


_FINAL_LAYER = {"sd15": "out.2", "sdxl": "out.2", "sd3": "final_layer.linear", "flux": "final_layer.linear"}


def _calibrate_output(tm: TinyModel, seed: int) -> None:
    """Scale the last layer so the raw model output has about unit std (like a trained ε/v predictor)."""
    model = tm.patcher.model
    final = dict(model.diffusion_model.named_modules())[_FINAL_LAYER[tm.family]]
    g = torch.Generator().manual_seed(seed + 7)
    x = torch.randn(1, tm.latent_channels, 16, 16, generator=g)
    sigma = model.model_sampling.sigma(torch.tensor([500.0]))
    import comfy.sampler_helpers
    import comfy.samplers

    conds = comfy.sampler_helpers.convert_cond(tm.positive)
    conds = comfy.samplers.encode_model_conds(model.extra_conds, conds, x, x.device, "positive")
    kwargs = {k: v.process_cond(batch_size=1, device=x.device).cond for k, v in conds[0]["model_conds"].items()}
    with torch.no_grad():
        den = model.apply_model(x, sigma, **kwargs)
        raw = (x - den) / sigma.view(-1, 1, 1, 1)
        scale = 1.0 / float(raw.std())
        final.weight.mul_(scale)
        if final.bias is not None:
            final.bias.mul_(scale)


def _count_calls(tm: TinyModel):
    dm = tm.patcher.model.diffusion_model

    def hook(mod, args, kwargs):
        x = args[0] if args else kwargs["x"]
        tm.calls.append(int(x.shape[0]))

    dm.register_forward_pre_hook(hook, with_kwargs=True)


def _patcher(model):
    import comfy.model_patcher

    dev = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=dev, offload_device=dev)


def _text(gen, tokens, width, scale=1.0):
    return torch.randn(1, tokens, width, generator=gen) * scale


def build_sd15(seed=0) -> TinyModel:
    import comfy.supported_models

    unet = dict(
        image_size=32, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=[1, 1],
        channel_mult=[1, 2], transformer_depth=[1, 1], transformer_depth_output=[1, 1, 1, 1],
        transformer_depth_middle=1, use_spatial_transformer=True, legacy=False, context_dim=768,
        use_linear_in_transformer=False, adm_in_channels=None, use_temporal_attention=False,
        use_temporal_resblock=False, use_checkpoint=False,
    )
    cfg = comfy.supported_models.SD15(unet)
    cfg.unet_config["num_heads"] = 2
    cfg.unet_config["num_head_channels"] = -1
    model = cfg.get_model({})
    init_weights(model.diffusion_model, seed)
    g = torch.Generator().manual_seed(seed + 100)
    pos = [[_text(g, 77, 768), {"pooled_output": torch.randn(1, 768, generator=g)}]]
    neg = [[_text(g, 77, 768), {"pooled_output": torch.randn(1, 768, generator=g)}]]
    tm = TinyModel("sd15", _patcher(model), pos, neg, 4)
    _calibrate_output(tm, seed)
    _count_calls(tm)
    return tm


def _sdxl_extras(w=1024, h=1024):
    return {"width": w, "height": h, "crop_w": 0, "crop_h": 0, "target_width": w, "target_height": h}


def build_sdxl(seed=0) -> TinyModel:
    import comfy.supported_models

    unet = dict(
        image_size=32, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=[1, 1],
        channel_mult=[1, 2], transformer_depth=[0, 1], transformer_depth_output=[0, 0, 1, 1],
        transformer_depth_middle=1, use_spatial_transformer=True, legacy=False, context_dim=2048,
        use_linear_in_transformer=True, adm_in_channels=2816, num_classes="sequential",
        use_temporal_attention=False, use_temporal_resblock=False, use_checkpoint=False,
    )
    cfg = comfy.supported_models.SDXL(unet)
    cfg.unet_config["num_head_channels"] = 16
    model = cfg.get_model({})
    init_weights(model.diffusion_model, seed)
    g = torch.Generator().manual_seed(seed + 100)
    pos = [[_text(g, 77, 2048), {"pooled_output": torch.randn(1, 1280, generator=g), **_sdxl_extras()}]]
    neg = [[_text(g, 77, 2048), {"pooled_output": torch.randn(1, 1280, generator=g), **_sdxl_extras()}]]
    tm = TinyModel("sdxl", _patcher(model), pos, neg, 4)
    _calibrate_output(tm, seed)
    _count_calls(tm)
    return tm


def build_sd3(seed=0, t5_tokens=77) -> TinyModel:
    import comfy.supported_models

    unet = dict(
        in_channels=16, out_channels=16, patch_size=2, depth=2, adm_in_channels=2048,
        context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 128}},
        pos_embed_max_size=32, num_patches=32 * 32, pos_embed_scaling_factor=None, qk_norm=None,
        x_block_self_attn_layers=[],
    )
    cfg = comfy.supported_models.SD3(unet)
    model = cfg.get_model({})
    init_weights(model.diffusion_model, seed)
    g = torch.Generator().manual_seed(seed + 100)

    def cond():
        clip = torch.nn.functional.pad(_text(g, 77, 2048), (0, 4096 - 2048))  # CLIP-L||G padded to T5 width
        return [[torch.cat([clip, _text(g, t5_tokens, 4096)], dim=1), {"pooled_output": torch.randn(1, 2048, generator=g)}]]

    tm = TinyModel("sd3", _patcher(model), cond(), cond(), 16)
    _calibrate_output(tm, seed)
    _count_calls(tm)
    return tm


# FLUX.1's values for FluxParams fields that newer ComfyUI requires and older ones lack (comfy/model_detection.py,
# the FLUX.1 branch): txt_ids_dims since ComfyUI 0.4.0.
FLUX1_VALUES = {"txt_ids_dims": []}


def flux_unet_config(sizes: dict, params_cls=None) -> dict:
    """A FLUX unet config for the running ComfyUI: `sizes` filtered to the fields its FluxParams dataclass has, plus
    FLUX.1's value for every required field `sizes` lacks (FLUX1_VALUES). A required field with no known value is a
    clear error, so a new core's change shows up here rather than as a TypeError deep in model construction."""
    import dataclasses

    if params_cls is None:
        from comfy.ldm.flux.model import FluxParams as params_cls
    fields = {f.name: f for f in dataclasses.fields(params_cls)}
    cfg = {k: v for k, v in sizes.items() if k in fields}
    for name, f in fields.items():
        if name in cfg or f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
            continue
        if name not in FLUX1_VALUES:
            raise RuntimeError(f"this ComfyUI's {params_cls.__name__} requires '{name}', which testkit/tiny_models.py "
                               "does not know: add FLUX.1's value (see comfy/model_detection.py) to FLUX1_VALUES")
        cfg[name] = list(FLUX1_VALUES[name]) if isinstance(FLUX1_VALUES[name], list) else FLUX1_VALUES[name]
    return {"image_model": "flux", **cfg}


def build_flux(seed=0, t5_tokens=64, guidance=3.5) -> TinyModel:
    import comfy.supported_models

    unet = flux_unet_config(dict(
        in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096,
        hidden_size=64, mlp_ratio=2.0, num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[8, 12, 12],
        theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True,
    ))
    cfg = comfy.supported_models.Flux(unet)
    model = cfg.get_model({})
    init_weights(model.diffusion_model, seed)
    g = torch.Generator().manual_seed(seed + 100)

    def cond():
        return [[_text(g, t5_tokens, 4096), {"pooled_output": torch.randn(1, 768, generator=g), "guidance": guidance}]]

    tm = TinyModel("flux", _patcher(model), cond(), cond(), 16)
    _calibrate_output(tm, seed)
    _count_calls(tm)
    return tm


BUILDERS = {"sd15": build_sd15, "sdxl": build_sdxl, "sd3": build_sd3, "flux": build_flux}
