"""The official CoRe² weak nets (`PromptSDXLNet`, `PromptSD35Net`) restated in plain torch.

Module and parameter names reproduce the official state dict exactly (diffusers `PatchEmbed`, `BasicTransformerBlock`,
`AdaLayerNormContinuous`, with every `nn.Linear` wrapped by the LoRA bank). The forward follows the official one
operation for operation (docs/method.md §6). The net is size-parameterised by `NetConfig`; `SDXL` and `SD35` are the
released configurations.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .lora import LoRABankLinear


@dataclass(frozen=True)
class NetConfig:
    variant: str  # "sdxl" | "sd35"
    in_channels: int  # latent channels (output has the same)
    num_layers: int  # transformer blocks (at most 8: heads for blocks 0–3 and 4–7)
    text_dim: int  # D_txt: width of the prompt tokens
    text_tokens: int  # T: rows of the stacked prompt matrix (2 prompts)
    pool_dim: int  # length of the pooled vector fed to the net
    pool_linear: bool  # SDXL projects the pooled vector pool_dim → text_dim; SD3.5 uses it as is (pool_dim == text_dim)
    lora_rank: int
    n_lora: int
    heads: int = 24
    head_dim: int = 64
    svd_rank: int = 64  # rows of _s / _d kept
    hidden: int = 128  # width of the prompt MLP heads
    patch_size: int = 2
    sample_size: int = 128  # latent size the sincos table is based on (base_size = sample_size / patch_size)
    pos_embed_max_size: int = 192

    @property
    def inner_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def ff_inner(self) -> int:
        return 2 * self.inner_dim

    @property
    def max_latent(self) -> int:
        return self.pos_embed_max_size * self.patch_size

    def scaled(self, **kw) -> "NetConfig":
        return replace(self, **kw)


SDXL = NetConfig("sdxl", in_channels=4, num_layers=4, text_dim=2048, text_tokens=154, pool_dim=2560, pool_linear=True,
                 lora_rank=48, n_lora=50)
SD35 = NetConfig("sd35", in_channels=16, num_layers=8, text_dim=4096, text_tokens=666, pool_dim=4096, pool_linear=False,
                 lora_rank=64, n_lora=28)
CONFIGS = {"sdxl": SDXL, "sd35": SD35}


def sincos_pos_embed(embed_dim: int, grid_size: int, base_size: int) -> torch.Tensor:
    """diffusers' 2-D sincos table [1, grid², D] (fp32): channels [0, D/2) encode the column, [D/2, D) the row.

    Positions are arange(grid)/(grid/base) in float32 (as numpy computes them); the products and sin/cos in float64.
    """
    if embed_dim % 4:
        raise ValueError("embed_dim must be divisible by 4")
    pos = (torch.arange(grid_size, dtype=torch.float32) / torch.tensor(grid_size / base_size, dtype=torch.float32)).double()
    half = embed_dim // 2
    omega = torch.arange(half // 2, dtype=torch.float64) / (half / 2.0)
    omega = 1.0 / 10000 ** omega

    def one_d(p):
        out = p[:, None] * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)  # [grid, half]

    col = one_d(pos)[None, :, :].expand(grid_size, grid_size, half)  # [row, col, half] depends on col
    row = one_d(pos)[:, None, :].expand(grid_size, grid_size, half)  # depends on row
    emb = torch.cat([col, row], dim=-1).reshape(1, grid_size * grid_size, embed_dim)
    return emb.float()


class PatchEmbed(nn.Module):
    """Conv patchify + centre-cropped sincos table (`pos_embed` is a persistent buffer, loaded from the file)."""

    def __init__(self, cfg: NetConfig, device=None, dtype=None, fill_pos_embed: bool = True):
        super().__init__()
        self.patch_size, self.max_size = cfg.patch_size, cfg.pos_embed_max_size
        self.proj = nn.Conv2d(cfg.in_channels, cfg.inner_dim, cfg.patch_size, stride=cfg.patch_size, bias=True,
                              device=device, dtype=dtype)
        n = cfg.pos_embed_max_size
        if fill_pos_embed and (device is None or torch.device(device).type != "meta"):
            table = sincos_pos_embed(cfg.inner_dim, n, cfg.sample_size // cfg.patch_size).to(device=device, dtype=dtype)
        else:
            table = torch.empty(1, n * n, cfg.inner_dim, device=device, dtype=dtype)
        self.register_buffer("pos_embed", table, persistent=True)

    def cropped_pos_embed(self, height: int, width: int) -> torch.Tensor:
        h, w = height // self.patch_size, width // self.patch_size
        top, left = (self.max_size - h) // 2, (self.max_size - w) // 2
        t = self.pos_embed.reshape(1, self.max_size, self.max_size, -1)[:, top:top + h, left:left + w, :]
        return t.reshape(1, -1, t.shape[-1])

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        height, width = latent.shape[-2:]
        x = self.proj(latent).flatten(2).transpose(1, 2)
        return (x + self.cropped_pos_embed(height, width)).to(x.dtype)


class Attention(nn.Module):
    """Self-attention with to_q/to_k/to_v (no bias) and to_out.0 (bias); to_out.1 is diffusers' Dropout."""

    def __init__(self, cfg: NetConfig, lin):
        super().__init__()
        d = cfg.inner_dim
        self.heads = cfg.heads
        self.to_q = lin(d, d, False)
        self.to_k = lin(d, d, False)
        self.to_v = lin(d, d, False)
        self.to_out = nn.ModuleList([lin(d, d, True), nn.Identity()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        q, k, v = (f(x).view(b, -1, self.heads, x.shape[-1] // self.heads).transpose(1, 2)
                   for f in (self.to_q, self.to_k, self.to_v))
        h = F.scaled_dot_product_attention(q, k, v)
        h = h.transpose(1, 2).reshape(b, -1, self.heads * q.shape[-1]).to(q.dtype)
        return self.to_out[0](h)


class GEGLU(nn.Module):
    def __init__(self, d_in: int, d_out: int, lin):
        super().__init__()
        self.proj = lin(d_in, 2 * d_out, True)

    def forward(self, x):
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, cfg: NetConfig, lin):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(cfg.inner_dim, cfg.ff_inner, lin), nn.Identity(), lin(cfg.ff_inner, cfg.inner_dim, True)])

    def forward(self, x):
        for m in self.net:
            x = m(x)
        return x


class Block(nn.Module):
    """diffusers BasicTransformerBlock without cross-attention: h += attn1(norm1(h)); h += ff(norm3(h))."""

    def __init__(self, cfg: NetConfig, lin, device=None, dtype=None):
        super().__init__()
        d = cfg.inner_dim
        self.norm1 = nn.LayerNorm(d, eps=1e-5, device=device, dtype=dtype)
        self.attn1 = Attention(cfg, lin)
        self.norm3 = nn.LayerNorm(d, eps=1e-5, device=device, dtype=dtype)
        self.ff = FeedForward(cfg, lin)

    def forward(self, h):
        h = self.attn1(self.norm1(h)) + h
        return self.ff(self.norm3(h)) + h


class AdaLayerNormContinuous(nn.Module):
    def __init__(self, cfg: NetConfig, lin):
        super().__init__()
        self.linear = lin(cfg.inner_dim, 2 * cfg.inner_dim, True)
        self.eps = 1e-6

    def forward(self, x, cond):
        emb = self.linear(F.silu(cond).to(x.dtype))
        scale, shift = torch.chunk(emb, 2, dim=1)
        x = F.layer_norm(x, (x.shape[-1],), eps=self.eps)
        return x * (1 + scale)[:, None, :] + shift[:, None, :]


class PromptNet(nn.Module):
    """PromptSDXLNet / PromptSD35Net with their LoRA banks. Call `set_active_lora` (lora.py) to pick LoRA j."""

    def __init__(self, cfg: NetConfig, device=None, dtype=None, fill_pos_embed: bool = True):
        super().__init__()
        if not 1 <= cfg.num_layers <= 8:
            raise ValueError("num_layers must be 1..8 (the official net has modulation heads for two groups of 4 blocks)")
        if not cfg.pool_linear and cfg.pool_dim != cfg.text_dim:
            raise ValueError("without pool_prompt_linear the pooled vector must have text_dim entries")
        self.cfg = cfg

        def lin(i, o, bias):
            return LoRABankLinear(i, o, bias, cfg.lora_rank, cfg.n_lora, device=device, dtype=dtype)

        def head():
            return nn.Sequential(lin(cfg.text_dim, cfg.hidden, True), nn.SiLU(),
                                 nn.LayerNorm(cfg.hidden, device=device, dtype=dtype), lin(cfg.hidden, cfg.inner_dim, True))

        self.pos_embed = PatchEmbed(cfg, device, dtype, fill_pos_embed)
        self.transformer_blocks = nn.ModuleList(Block(cfg, lin, device, dtype) for _ in range(cfg.num_layers))
        self.norm_out = AdaLayerNormContinuous(cfg, lin)
        self.proj_out = lin(cfg.inner_dim, cfg.patch_size ** 2 * cfg.in_channels, True)
        for name in ("pre8_linear", "pre16_linear", "pre24_linear", "pre8_linear2", "pre16_linear2", "pre24_linear2",
                     "last_linear"):
            setattr(self, name, head())
        self.skip_connection2 = lin(cfg.text_dim, 1, False)
        self.skip_connection = lin(cfg.text_tokens + 1, 2 * cfg.in_channels, False)
        self.trans_linear = lin(cfg.text_tokens + 1 + cfg.text_dim, cfg.inner_dim, False)
        if cfg.pool_linear:
            self.pool_prompt_linear = lin(cfg.pool_dim, cfg.text_dim, False)

    # -- prompt side: depends only on (_s, _v, _d, pooled) and the active LoRA; cacheable per step -----------------
    def prompt_terms(self, s: torch.Tensor, v: torch.Tensor, d: torch.Tensor, pooled: torch.Tensor) -> dict:
        """s [B,64,T], v [B,64], d [B,64,D_txt], pooled [B,P] → the per-channel modulations used by `denoise`."""
        cfg = self.cfg
        if s.shape[1:] != (cfg.svd_rank, cfg.text_tokens) or d.shape[1:] != (cfg.svd_rank, cfg.text_dim) \
                or v.shape[1:] != (cfg.svd_rank,) or pooled.shape[1:] != (cfg.pool_dim,):
            raise ValueError(f"CoRe² official {cfg.variant} net: prompt inputs have shapes s{tuple(s.shape)} "
                             f"v{tuple(v.shape)} d{tuple(d.shape)} pooled{tuple(pooled.shape)}; expected "
                             f"[B,{cfg.svd_rank},{cfg.text_tokens}], [B,{cfg.svd_rank}], [B,{cfg.svd_rank},{cfg.text_dim}], "
                             f"[B,{cfg.pool_dim}]")
        diag = torch.diag_embed(v)
        prompt_embedding = s.permute(0, 2, 1) @ diag @ d  # [B,T,D_txt]
        pool = pooled[:, None, :]
        if cfg.pool_linear:
            pool = self.pool_prompt_linear(pool)
        e = torch.cat([prompt_embedding, pool], dim=1)  # [B,T+1,D_txt]
        t = {
            "scale8": self.pre8_linear2(e).mean(1), "scale16": self.pre16_linear2(e).mean(1),
            "scale24": self.pre24_linear2(e).mean(1),
            "embed8": self.pre8_linear(e).mean(1), "embed16": self.pre16_linear(e).mean(1),
            "embed24": self.pre24_linear(e).mean(1),
            "last": self.last_linear(e).mean(1),
            "trans": self.trans_linear(torch.cat([s, v[..., None], d], dim=2)).mean(1),
        }
        skip = self.skip_connection(self.skip_connection2(e).permute(0, 2, 1)).permute(0, 2, 1)  # [B,2C,1]
        t["skip_scale"], t["skip_shift"] = skip.chunk(2, dim=1)
        return t

    # -- noise side ---------------------------------------------------------------------------------------------
    def check_latent(self, shape) -> None:
        cfg = self.cfg
        if len(shape) != 4 or shape[1] != cfg.in_channels:
            raise ValueError(f"CoRe² official {cfg.variant} weak model: expected a [B,{cfg.in_channels},H,W] latent "
                             f"output, got {list(shape)}")
        h, w = shape[-2:]
        if h % cfg.patch_size or w % cfg.patch_size:
            raise ValueError(f"CoRe² official {cfg.variant} weak model: latent {h}×{w} must have even height and width "
                             f"(image size a multiple of 16 px)")
        if h > cfg.max_latent or w > cfg.max_latent:
            raise ValueError(f"CoRe² official {cfg.variant} weak model: latent {h}×{w} is larger than its position "
                             f"table allows (at most {cfg.max_latent}×{cfg.max_latent} latent, i.e. "
                             f"{cfg.max_latent * 8}×{cfg.max_latent * 8} px). Generate smaller images or upscale after.")

    def denoise(self, noise: torch.Tensor, t: dict) -> torch.Tensor:
        self.check_latent(noise.shape)
        cfg = self.cfg
        height, width = noise.shape[-2:]
        skip = noise * t["skip_scale"][..., None] + t["skip_shift"][..., None]
        h = self.pos_embed(noise)
        trans = t["trans"][:, None, :]
        h = h * (1 + t["scale8"][:, None, :] + trans) + t["embed8"][:, None, :]
        scales, embeds = (t["scale16"], t["scale24"]), (t["embed16"], t["embed24"])
        for i, block in enumerate(self.transformer_blocks):
            h = block(h)
            h = h * (1 + scales[i // 4][:, None, :] + trans) + embeds[i // 4][:, None, :]
        h = self.norm_out(h, t["last"])
        h = self.proj_out(h)
        p, c = cfg.patch_size, cfg.in_channels
        gh, gw = height // p, width // p
        h = h.reshape(h.shape[0], gh, gw, p, p, c)
        h = torch.einsum("nhwpqc->nchpwq", h)
        return h.reshape(h.shape[0], c, gh * p, gw * p) + skip

    def forward(self, noise, s, v, d, pooled):
        """Same signature and result as the official `forward(noise, _s, _v, _d, _pool_embedding)`."""
        self.check_latent(noise.shape)
        return self.denoise(noise, self.prompt_terms(s, v, d, pooled))
