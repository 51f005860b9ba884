"""The official CoRe² weak nets behind the WeakModel contract (core2/weak.py)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from ..weak import PromptFeatures, StepInfo, WeakModel
from .compat import OFFICIAL
from .lora import set_active_lora
from .net import PromptNet
from .recipes import SVDInputs, inputs_for
from .steps import INDEX_MODES, TRAINING_SIGMAS, official_lora_index, sigma_nearest_lora_index

log = logging.getLogger(__name__)

# variant: (WeakModel family, prediction, trained cfg, training steps, training sampler)
VARIANT_INFO = {v: (o.family, o.prediction, o.cfg, o.steps, o.sampler) for v, o in OFFICIAL.items()}


def default_input_dtype(device) -> torch.dtype:
    """bf16 (as the official code runs) on CUDA devices with fast bf16 (compute capability 8.0+, Ampere on); fp16 on
    older CUDA devices, where bf16 is emulated and slow; fp32 elsewhere (bf16 matmuls are slow on most CPUs)."""
    device = torch.device(device)
    if device.type != "cuda":
        return torch.float32
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


@dataclass
class OfficialContext:
    """Per-run prompt inputs (prepared once) and the per-LoRA prompt terms (computed once per index)."""

    inputs: SVDInputs
    terms: dict = field(default_factory=dict)


class OfficialWeakModel(WeakModel):
    """Released CoRe² weights (`sdxl_noise_model.pth`, `sd35_noise_model.pth`).

    The CFG scale is baked into the weights (uses_cfg_scale = False); the sampling step picks the LoRA.
    """

    uses_cfg_scale = False

    def __init__(self, net: PromptNet, lora_index_mode: str = "official", source: str | None = None):
        super().__init__()
        variant = net.cfg.variant
        if variant not in VARIANT_INFO:
            raise ValueError(f"unknown official variant {variant!r}")
        self.net = net
        self.variant = variant
        self.family, self.prediction, self.trained_cfg, self.trained_steps, self.trained_sampler = VARIANT_INFO[variant]
        self.latent_channels = net.cfg.in_channels
        self.n_lora = net.cfg.n_lora
        self.source = source
        self.name = f"CoRe² official {variant}" + (f" ({source})" if source else "")
        self.lora_index_mode = lora_index_mode

    def setting_warnings(self, cfg, steps, scheduler):
        from .compat import compatibility_warnings

        return compatibility_warnings(self, cfg, steps, scheduler)

    def prompt_notes(self, positive, negative):
        from .compat import prompt_notes

        return prompt_notes(self, positive, negative)

    @property
    def lora_index_mode(self) -> str:
        return self._mode

    @lora_index_mode.setter
    def lora_index_mode(self, mode: str) -> None:
        if mode not in INDEX_MODES:
            raise ValueError(f"lora_index_mode must be one of {INDEX_MODES}, got {mode!r}")
        self._mode = mode

    @property
    def device(self) -> torch.device:
        return self.net.pos_embed.proj.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.net.pos_embed.proj.weight.dtype

    # -- contract -------------------------------------------------------------------------------------------------
    def prepare(self, positive: PromptFeatures, negative: PromptFeatures | None) -> OfficialContext:
        """SVD prompt inputs, once per run, in fp32 on the net's device; cast to the net's dtype."""
        with torch.no_grad():
            inputs = inputs_for(self.net.cfg, positive, negative, device=self.device, dtype=self.dtype)
        return OfficialContext(inputs)

    def lora_index(self, step: StepInfo, sigma=None) -> int:
        """The LoRA for a step: "official" = the fraction of steps done, except on a schedule that does not start
        from full noise (denoise < 1: step.denoise), where the fraction of the shortened schedule would pick LoRAs
        trained for higher noise, so the σ rule is used; "sigma" = always the σ rule."""
        if self._mode == "sigma" or getattr(step, "denoise", 1.0) < 1.0:
            s = sigma
            if s is None and step.schedule is not None:
                s = step.schedule[step.index]
            if s is not None:
                s = float(s.flatten()[0]) if torch.is_tensor(s) else float(s)
                return sigma_nearest_lora_index(s, TRAINING_SIGMAS[self.variant](), log_space=self.variant == "sdxl")
            log.debug("CoRe² official: no σ available, using the official step mapping")
        return official_lora_index(step.index, step.total, self.n_lora)

    def predict(self, raw_cond: torch.Tensor, sigma, cfg_scale: float, step: StepInfo, context) -> torch.Tensor:
        if not isinstance(context, OfficialContext):
            raise TypeError("CoRe² official weak model: call prepare() first and pass its result as the context")
        self.net.check_latent(raw_cond.shape)
        j = self.lora_index(step, sigma)
        with torch.no_grad():
            terms = context.terms.get(j)
            if terms is None:
                set_active_lora(self.net, j)
                i = context.inputs
                terms = self.net.prompt_terms(i.s, i.v, i.d, i.pooled)
                context.terms = {j: terms}  # keep only the current index
            b, bp = raw_cond.shape[0], context.inputs.batch
            if b != bp:
                if b % bp:
                    raise ValueError(f"CoRe² official weak model: latent batch {b} is not a multiple of the prompt batch {bp}")
                terms = {k: v.repeat_interleave(b // bp, dim=0) for k, v in terms.items()}
            set_active_lora(self.net, j)
            out = self.net.denoise(raw_cond.to(device=self.device, dtype=self.dtype), terms)
        return out.to(device=raw_cond.device, dtype=raw_cond.dtype)
