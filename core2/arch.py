"""The pack's own weak model: a small FiLM-conditioned conv U-Net that predicts the unconditional output.

Inputs per call: the conditional raw output r_c [B,C,H,W], σ [B], and a per-run prompt context built once from the
positive and negative PromptFeatures. The net predicts r̂_u = r_c + Δ(r_c; σ, prompts) and the CFG output follows
for ANY scale g:  r̂_cfg = r̂_u + g·(r_c − r̂_u). Nothing depends on the step index or the schedule (σ enters
continuously through log-σ Fourier features), so one model serves every step count, sampler and scheduler, and
the CFG scale stays a free knob at inference.

Why predict r_u and not r_cfg at the stored g: for one sample, ‖r̂_cfg − r_cfg‖ = |g − 1|·‖r̂_u − r_u‖, so the
relative error ‖r̂_cfg − r_cfg‖ / ‖r_cfg − r_c‖ = ‖r̂_u − r_u‖ / ‖r_c − r_u‖ is the same at every g. A model that
fits r_u fits CFG at all scales equally well (up to how far the trajectories at another g drift from the data).

The config is a plain dict (stored in the file's metadata), so a file rebuilds its model without code changes.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import guidance
from .weak import GuidanceMemory, PromptFeatures, StepInfo, WeakModel

ARCH = "core2.conv_film"
ARCH_VERSION = 3  # 2: optional x_t input ("x_input"); 3: optional guidance memory ("memory"); older files load
# with those off

PRESETS = {
    "tiny": {"width": 32, "mults": [1, 2], "blocks": 1, "emb_dim": 128, "queries": 4},
    "small": {"width": 64, "mults": [1, 2], "blocks": 1, "emb_dim": 256, "queries": 4},
    "medium": {"width": 128, "mults": [1, 2, 2], "blocks": 2, "emb_dim": 384, "queries": 4},
    "large": {"width": 192, "mults": [1, 2, 2], "blocks": 3, "emb_dim": 512, "queries": 8},
}
SIZES = tuple(PRESETS)


def make_config(size: str, latent_channels: int, token_dim: int, pooled_dim: int | None, family: str = "any",
                prediction: str | None = None, x_input: bool = False, memory: bool = False, **overrides) -> dict:
    """A complete config for `size` ("tiny" | "small" | "medium" | "large"); keyword overrides win.

    x_input: the net also sees the noisy latent x_t (see ConvFiLMWeakModel.predict_uncond); needs datasets
    collected with store_x, and x_t at inference (the CoRe² guider always passes it).
    memory: the net also sees the guidance difference measured on the run's most recent slow step (GuidanceMemory);
    needs x_input."""
    if memory and not x_input:
        raise ValueError("CoRe²: a weak model with guidance memory needs x_t input (collect with store_x on).")
    if size not in PRESETS:
        raise ValueError(f"CoRe²: unknown weak-model size {size!r}; choose one of {', '.join(SIZES)}.")
    cfg = {"arch": ARCH, "arch_version": ARCH_VERSION, "size": size, "latent_channels": int(latent_channels),
           "token_dim": int(token_dim), "pooled_dim": int(pooled_dim or 0), "patch": 2, "fourier": 16,
           "family": family, "prediction": prediction, "x_input": bool(x_input), "memory": bool(memory),
           **PRESETS[size]}
    cfg.update(overrides)
    return cfg


def _groups(ch: int) -> int:
    for g in (8, 4, 2, 1):
        if ch % g == 0:
            return g
    return 1


class FiLMResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class PromptEncoder(nn.Module):
    """Tokens [B,T,D] (+ mask) and pooled [B,P] → one vector [B,E]: masked mean plus learned-query attention pooling.

    The queries live in token space, so the cost is O(T·D·queries), independent of E: cheap even for T5 tokens.
    """

    def __init__(self, token_dim: int, pooled_dim: int, emb_dim: int, queries: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(queries, token_dim) / math.sqrt(token_dim))
        self.proj = nn.Linear(token_dim * (queries + 1), emb_dim)
        self.pooled = nn.Linear(pooled_dim, emb_dim) if pooled_dim else None

    def forward(self, tokens, mask, pooled):
        tokens = F.layer_norm(tokens, tokens.shape[-1:])
        maskf = mask.to(tokens.dtype)[..., None]  # [B,T,1]
        mean = (tokens * maskf).sum(1) / maskf.sum(1).clamp_min(1.0)
        scores = torch.einsum("btd,qd->bqt", tokens, self.queries) / math.sqrt(tokens.shape[-1])
        scores = scores.masked_fill(~mask[:, None, :], torch.finfo(scores.dtype).min)
        attn = torch.einsum("bqt,btd->bqd", scores.softmax(-1), tokens)
        out = self.proj(torch.cat([mean[:, None], attn], 1).flatten(1))
        if self.pooled is not None:
            if pooled is None:
                pooled = torch.zeros(tokens.shape[0], self.pooled.in_features, device=tokens.device, dtype=tokens.dtype)
            out = out + self.pooled(F.layer_norm(pooled, pooled.shape[-1:]))
        return out


class ConvFiLMWeakModel(WeakModel):
    """The default weak model (see the module docstring). Build with make_config(); rebuild from a file with its config."""

    guidance_gain = None  # calibration.GuidanceGain: set after training and by the file's metadata (None: raw strength)

    def __init__(self, config: dict):
        super().__init__()
        if config.get("arch") != ARCH:
            raise ValueError(f"config is for {config.get('arch')!r}, not {ARCH}")
        self.config = dict(config)
        c = self.config
        self.family = c.get("family") or "any"
        self.latent_channels = c["latent_channels"]
        self.prediction = c.get("prediction")
        self.name = c.get("name", f"CoRe² conv-FiLM ({c['size']})")
        self.x_input = bool(c.get("x_input", False))
        self.memory = self.remembers_guidance = bool(c.get("memory", False))
        if self.memory and not self.x_input:
            raise ValueError("CoRe²: a weak model with guidance memory needs x_t input (config x_input).")
        self._observed: GuidanceMemory | None = None  # per run: the latest slow step's guidance (memory models)
        cin, w, e, p = c["latent_channels"], c["width"], c["emb_dim"], c["patch"]
        self.register_buffer("freqs", torch.exp(torch.linspace(math.log(0.25), math.log(16.0), c["fourier"])),
                             persistent=False)
        self.sigma_mlp = nn.Sequential(nn.Linear(2 * c["fourier"] + 1, e), nn.SiLU(), nn.Linear(e, e))
        self.prompt = PromptEncoder(c["token_dim"], c["pooled_dim"], e, c["queries"])
        self.null_negative = nn.Parameter(torch.zeros(e))  # stands in for an absent negative prompt
        self.ctx_mlp = nn.Sequential(nn.Linear(2 * e, e), nn.SiLU(), nn.Linear(e, e))
        self.emb_out = nn.Sequential(nn.SiLU(), nn.Linear(e, e))
        if self.memory:  # σ of the remembered slow step, whether there is one, and how much of it to reuse
            self.memory_sigma = nn.Linear(e, e)
            self.memory_flag = nn.Parameter(torch.zeros(e))
            self.memory_gate = nn.Linear(e, cin)
            for t in (self.memory_sigma.weight, self.memory_sigma.bias, self.memory_gate.weight):
                nn.init.zeros_(t)
            nn.init.ones_(self.memory_gate.bias)  # starts as the reuse fill-in where a slow step was measured

        chans = [w * m for m in c["mults"]]
        self.stem = nn.Conv2d(cin * (1 + self.x_input + self.memory), chans[0], p, stride=p)
        self.down_blocks = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        for i, ch in enumerate(chans):
            prev = chans[i - 1] if i else chans[0]
            blocks = [FiLMResBlock(prev if j == 0 else ch, ch, e) for j in range(c["blocks"])]
            self.down_blocks.append(nn.ModuleList(blocks))
            if i < len(chans) - 1:
                self.downsamples.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.up_blocks = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for i in reversed(range(len(chans) - 1)):
            self.upsamples.append(nn.Conv2d(chans[i + 1], chans[i], 3, padding=1))
            self.up_blocks.append(nn.ModuleList([FiLMResBlock(2 * chans[i] if j == 0 else chans[i], chans[i], e)
                                                 for j in range(c["blocks"])]))
        self.out_norm = nn.GroupNorm(_groups(chans[0]), chans[0])
        self.head = nn.ConvTranspose2d(chans[0], cin, p, stride=p)
        nn.init.zeros_(self.head.weight)  # start as the identity map: r̂_u = r_c, i.e. r̂_cfg = r_c
        nn.init.zeros_(self.head.bias)

    # --- conditioning -----------------------------------------------------------------------------------------
    @property
    def multiple(self) -> int:
        return self.config["patch"] * 2 ** (len(self.config["mults"]) - 1)

    def _param(self):
        return self.stem.weight

    def encode_prompts(self, pos_tokens, pos_mask, pos_pooled, neg_tokens, neg_mask, neg_pooled, has_neg) -> torch.Tensor:
        """Prompt context [B, E] from padded token batches (the Reflect training batches use the same call)."""
        pos = self.prompt(pos_tokens, pos_mask, pos_pooled)
        if neg_tokens is None:
            neg = self.null_negative.expand_as(pos)
        else:
            neg = self.prompt(neg_tokens, neg_mask, neg_pooled)
            neg = torch.where(has_neg.to(pos.device)[:, None], neg, self.null_negative.expand_as(neg))
        return self.ctx_mlp(torch.cat([pos, neg], 1))

    def _check_features(self, f: PromptFeatures, what: str):
        d = f.tokens.shape[-1]
        if d != self.config["token_dim"]:
            raise ValueError(f"CoRe²: the {what} prompt has {d}-wide token features, but this weak model was trained on "
                             f"{self.config['token_dim']}-wide ones (another text encoder / model family).")

    def prepare(self, positive: PromptFeatures, negative: PromptFeatures | None):
        ref = self._param()
        self._check_features(positive, "positive")
        pos = positive.to(ref.device, ref.dtype)
        b = pos.tokens.shape[0]
        mask = torch.ones(pos.tokens.shape[:2], dtype=torch.bool, device=ref.device)
        if negative is not None:
            self._check_features(negative, "negative")
            neg = negative.to(ref.device, ref.dtype)
            if neg.tokens.shape[0] != b:
                nb = max(b, neg.tokens.shape[0])
                pos, neg = pos.expand(nb), neg.expand(nb)
                b = nb
                mask = torch.ones(pos.tokens.shape[:2], dtype=torch.bool, device=ref.device)
            nmask = torch.ones(neg.tokens.shape[:2], dtype=torch.bool, device=ref.device)
            has = torch.ones(b, dtype=torch.bool, device=ref.device)
            args = (neg.tokens, nmask, neg.pooled, has)
        else:
            args = (None, None, None, None)
        with torch.no_grad():
            return self.encode_prompts(pos.tokens, mask, pos.pooled, *args)

    def sigma_embedding(self, sigma: torch.Tensor) -> torch.Tensor:
        ls = torch.log(sigma.float().clamp_min(1e-5))[:, None]
        ang = ls * self.freqs[None].float()
        return self.sigma_mlp(torch.cat([ls, ang.sin(), ang.cos()], 1).to(self._param().dtype))

    # --- the net ----------------------------------------------------------------------------------------------
    def _input_scale(self, sigma: torch.Tensor) -> torch.Tensor:
        """Brings x_t to unit scale: 1/√(σ²+1) for ε/v models (x = x0 + σ·ε), 1 for flow models (x = (1−σ)·x0 + σ·ε)."""
        if self.prediction == "flow":
            return torch.ones_like(sigma)
        return (sigma.float() ** 2 + 1.0).rsqrt().to(sigma.dtype)

    def predict_uncond(self, raw_cond: torch.Tensor, sigma: torch.Tensor, ctx: torch.Tensor,
                       x: torch.Tensor | None = None, memory: GuidanceMemory | None = None) -> torch.Tensor:
        """r̂_u for a batch: raw_cond [B,C,H,W], sigma [B] (or scalar), ctx [B or 1, E] from prepare()/encode_prompts(),
        x [B,C,H,W] the noisy latent x_t (required when the model was built with x_input), memory the run's latest
        slow-step guidance (models built with memory; None: no slow step yet).

        Without x the net maps r_c to r̂_u directly. With x it works in x0 space: the conditional x0 prediction
        x0_c = x − σ·r_c and the scaled x_t go in, a correction Δ comes out, x̂0_u = x0_c + Δ and r̂_u = r_c − Δ/σ.
        That matters for ε-like outputs: at high σ, r_c is mostly the noise itself, so a net that sees only r_c has to
        denoise it to find the guidance signal, and learns the collected noise seeds instead of the task.
        With memory, the reuse fill-in's correction σ·D (D = r_c − r_u at the remembered slow step) goes in too, and
        Δ = net + gate·σ·D: at initialisation the model IS the reuse fill-in, and it learns what reuse gets wrong."""
        b = raw_cond.shape[0]
        sigma = torch.as_tensor(sigma, device=raw_cond.device).reshape(-1)
        if sigma.numel() == 1 and b > 1:
            sigma = sigma.expand(b)
        if ctx.shape[0] != b:
            if b % ctx.shape[0]:
                raise ValueError(f"prompt batch {ctx.shape[0]} does not divide latent batch {b}")
            ctx = ctx.repeat_interleave(b // ctx.shape[0], dim=0)
        if self.memory and memory is None:
            memory = GuidanceMemory.empty(raw_cond)
        emb = self._embedding(sigma, ctx, memory)
        if not self.x_input:
            return raw_cond + self._net(raw_cond, emb)
        if x is None:
            raise ValueError("CoRe²: this weak model needs the noisy latent x_t (it was trained with x_t input); "
                             "use it through the CoRe² sampler nodes, which pass it.")
        s4 = sigma.to(raw_cond.dtype).view(-1, 1, 1, 1)
        x = x.to(raw_cond.dtype)
        inputs = [x - s4 * raw_cond, x * self._input_scale(sigma).to(raw_cond.dtype).view(-1, 1, 1, 1)]
        if self.memory:
            reuse = s4 * memory.delta.to(raw_cond) * memory.has.to(raw_cond).view(-1, 1, 1, 1)
            inputs.append(reuse)
        delta = self._net(torch.cat(inputs, 1), emb)
        if self.memory:
            delta = delta + self.memory_gate(emb).to(delta)[:, :, None, None] * reuse
        return raw_cond - delta / s4.clamp_min(1e-4)

    def _embedding(self, sigma: torch.Tensor, ctx: torch.Tensor, memory: GuidanceMemory | None) -> torch.Tensor:
        """The vector every block is modulated with: σ, the prompts and (memory models) the remembered step's σ."""
        e = self.sigma_embedding(sigma) + ctx
        if self.memory:
            has = memory.has.to(e.device).view(-1, 1).to(e.dtype)
            mem_sigma = torch.as_tensor(memory.sigma, device=e.device).reshape(-1).expand(e.shape[0])
            e = e + has * (self.memory_sigma(self.sigma_embedding(mem_sigma)) + self.memory_flag)
        return self.emb_out(e)

    def _net(self, inp: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """The U-Net: inputs [B, C·k, H, W] (padded to a multiple of its stride) → a correction [B, C, H, W]."""
        h, w = inp.shape[-2:]
        m = self.multiple
        ph, pw = (-h) % m, (-w) % m
        z = F.pad(inp, (0, pw, 0, ph), mode="replicate") if (ph or pw) else inp
        z = self.stem(z)
        skips = []
        for i, blocks in enumerate(self.down_blocks):
            for blk in blocks:
                z = blk(z, emb)
            if i < len(self.downsamples):
                skips.append(z)
                z = self.downsamples[i](z)
        for up, blocks in zip(self.upsamples, self.up_blocks):
            z = up(F.interpolate(z, scale_factor=2.0, mode="nearest"))
            z = torch.cat([z, skips.pop()], 1)
            for blk in blocks:
                z = blk(z, emb)
        return self.head(F.silu(self.out_norm(z)))[:, :, :h, :w]

    # --- per-run memory (the guider reports each slow step) ----------------------------------------------------
    def reset(self) -> None:
        self._observed = None

    def observe_slow(self, raw_cond: torch.Tensor, raw_uncond: torch.Tensor, sigma, step) -> None:
        if self.memory:
            d = (raw_cond - raw_uncond).detach()
            s = torch.as_tensor(sigma, device=d.device, dtype=d.dtype).reshape(-1).expand(d.shape[0])
            self._observed = GuidanceMemory(d, s, torch.ones(d.shape[0], dtype=torch.bool, device=d.device))

    def _memory_for(self, rc: torch.Tensor) -> GuidanceMemory | None:
        m = self._observed
        if not self.memory or m is None or m.delta.shape != rc.shape:
            return None
        return GuidanceMemory(m.delta.to(rc), m.sigma.to(rc), m.has.to(rc.device))

    def predict(self, raw_cond: torch.Tensor, sigma: torch.Tensor, cfg_scale: float, step: StepInfo, context) -> torch.Tensor:
        ref = self._param()
        rc = raw_cond.to(ref.device, ref.dtype)
        x = (step.extra or {}).get("x") if step is not None else None
        if x is not None:
            x = x.to(ref.device, ref.dtype)
        memory = self._memory_for(rc)
        ru = self.predict_uncond(rc, sigma.to(ref.device), context.to(ref.device, ref.dtype), x, memory)
        if self.guidance_gain is not None and memory is None:  # nothing measured to go on: calibrated strength
            ru = rc - self.guidance_gain.at(sigma).to(rc).view(-1, 1, 1, 1) * (rc - ru)
        out = guidance.cfg(rc, ru, float(cfg_scale))
        return out.to(raw_cond.device, raw_cond.dtype)


ARCHITECTURES = {ARCH: ConvFiLMWeakModel}
# what a config may say (a file's metadata decides the model's size, so it is checked before anything is built)
BOUNDS = {"latent_channels": (1, 64), "token_dim": (1, 16384), "pooled_dim": (0, 16384), "width": (1, 1024),
          "blocks": (1, 8), "emb_dim": (1, 4096), "queries": (1, 64), "patch": (1, 8), "fourier": (1, 64)}
MAX_MULTS, MAX_MULT = 5, 8
MAX_PARAMETERS = 500_000_000


def check_config(config) -> None:
    """Raise ValueError naming the first field of a conv-FiLM config that is missing or outside sane bounds."""
    if not isinstance(config, dict):
        raise ValueError(f"CoRe²: the weak-model config is a {type(config).__name__}, not a dict")
    if config.get("arch") not in ARCHITECTURES:
        raise ValueError(f"CoRe²: unknown weak-model architecture {config.get('arch')!r} (known: "
                         f"{', '.join(ARCHITECTURES)}); the file may come from a newer comfyui-core2.")
    for k, (lo, hi) in BOUNDS.items():
        v = config.get(k)
        if type(v) is not int or not lo <= v <= hi:
            raise ValueError(f"CoRe²: weak-model config {k} = {v!r} is not an integer in [{lo}, {hi}]")
    for k in ("x_input", "memory"):
        if type(config.get(k, False)) is not bool:
            raise ValueError(f"CoRe²: weak-model config {k} = {config[k]!r} is not true or false")
    if config.get("memory") and not config.get("x_input"):
        raise ValueError("CoRe²: the weak-model config has memory without x_input; the file is damaged.")
    mults = config.get("mults")
    if not isinstance(mults, list) or not 1 <= len(mults) <= MAX_MULTS \
            or not all(type(m) is int and 1 <= m <= MAX_MULT for m in mults):
        raise ValueError(f"CoRe²: weak-model config mults = {mults!r} is not a list of 1-{MAX_MULTS} integers in "
                         f"[1, {MAX_MULT}]")
    if config["width"] * max(mults) > 4096:
        raise ValueError(f"CoRe²: weak-model config width × mults = {config['width'] * max(mults)} channels is too wide")


def parameter_shapes(config: dict) -> dict[str, tuple]:
    """The state-dict shapes a config builds, computed without allocating (on the meta device)."""
    check_config(config)
    with torch.device("meta"):
        skeleton = ARCHITECTURES[config["arch"]](config)
    shapes = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    n = sum(math.prod(s) for s in shapes.values())
    if n > MAX_PARAMETERS:
        raise ValueError(f"CoRe²: the weak-model config describes {n / 1e6:.0f}M parameters (at most "
                         f"{MAX_PARAMETERS / 1e6:.0f}M)")
    return shapes


def build(config: dict) -> WeakModel:
    """Rebuild a weak model from its stored config dict (checked against BOUNDS first)."""
    check_config(config)
    return ARCHITECTURES[config["arch"]](config)


__all__ = ["ConvFiLMWeakModel", "PromptEncoder", "make_config", "build", "check_config", "parameter_shapes", "BOUNDS",
           "PRESETS", "SIZES", "ARCH", "ARCHITECTURES"]
