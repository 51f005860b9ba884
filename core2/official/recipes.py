"""Prompt inputs of the official weak nets (`_s, _v, _d` and the pooled vector) from ComfyUI-style PromptFeatures.

Reproduces the official pipelines (docs/method.md §6), quirks included:
* the prompt matrix A stacks two prompts' tokens; SVD with full_matrices=True in float32 on the sampling device;
* `_s` is the first 64 ROWS of U (not columns), `_v` the first 64 singular values, `_d` the first 64 rows of Vh;
* SDXL: stack [negative; positive] with a ZERO negative (tokens and pooled), 77 tokens each → A [154, 2048],
  pooled [2560] = [zeros(1280) ‖ pooled_G]; the user's negative prompt is ignored, as in the official code;
* SD3.5: stack [positive; negative] with 77 CLIP + exactly 256 T5 tokens each → A [666, 4096], pooled [4096] =
  [pooled_pos ‖ pooled_neg]. The official negative is the encoding of the EMPTY prompt: feed an empty-prompt
  conditioning as `negative` to stay in-distribution. ComfyUI's SD3 tokens are [CLIP rows; T5 rows]: the CLIP rows
  (CLIP-L ‖ CLIP-G, 2048 wide, zero-padded to 4096) come in chunks of 77, one per 75 prompt tokens; the official
  tokenizers truncate CLIP at 77, so only the first chunk is used, and T5 starts after the last CLIP row (found by
  the zero padding). ComfyUI's T5 part is at least 77 rows (prompt, EOS, pad-token outputs); the official encoder
  gives 256 (pad-token outputs to the end). The pack pads it to 256 with copies of its last row (a pad-token output
  for prompts under 76 T5 tokens), or truncates it. With a random-weight T5 this moves the top-64 singular values by
  2–10% where zero rows moved them by 41–53% (tests/test_official.py, test_sd35_t5_padding_*).
* the SVD runs in float32 on the features as ComfyUI gives them (float32); the results are then cast to the net's
  input dtype (bf16 in the official code).
Batches: one SVD per sample (the official code only handles batch 1).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..weak import PromptFeatures

SVD_RANK = 64
CLIP_TOKENS = 77
SD35_T5_TOKENS = 256
SDXL_TEXT_DIM, SDXL_POOLED = 2048, 1280
SD35_TEXT_DIM, SD35_POOLED = 4096, 2048
SD35_CLIP_WIDTH = 768 + 1280  # CLIP-L ‖ CLIP-G, zero-padded to SD35_TEXT_DIM by ComfyUI (and the official pipeline)


@dataclass
class SVDInputs:
    """Batched net inputs: s [B,64,T], v [B,64], d [B,64,D], pooled [B,P]."""

    s: torch.Tensor
    v: torch.Tensor
    d: torch.Tensor
    pooled: torch.Tensor

    @property
    def batch(self) -> int:
        return self.s.shape[0]


def svd_rows(a: torch.Tensor, k: int = SVD_RANK):
    """(U[:k], S[:k], Vh[:k]) of `a` [T, D] with torch.linalg.svd(a.float()) (full_matrices=True), as the official code."""
    u, sv, vh = torch.linalg.svd(a.float())
    return u[:k], sv[:k], vh[:k]


def _check(feat: PromptFeatures | None, what: str, dim: int, pooled: int, min_tokens: int, family: str):
    if feat is None:
        raise ValueError(f"CoRe² official {family} weak model: the {what} conditioning is missing")
    t = feat.tokens
    if t.ndim != 3 or t.shape[-1] != dim:
        raise ValueError(f"CoRe² official {family} weak model: {what} prompt tokens have shape {list(t.shape)}, expected "
                         f"[B, T, {dim}] ({family} text encoders). Use the conditioning of the matching checkpoint.")
    if t.shape[1] < min_tokens:
        raise ValueError(f"CoRe² official {family} weak model: {what} prompt has {t.shape[1]} tokens, at least "
                         f"{min_tokens} expected (CLIP pads to 77)")
    if feat.pooled is None or feat.pooled.shape[-1] != pooled:
        got = None if feat.pooled is None else list(feat.pooled.shape)
        raise ValueError(f"CoRe² official {family} weak model: {what} pooled output is {got}, expected [B, {pooled}]. "
                         f"Use a conditioning from the {family} CLIP text encoders (with pooled_output).")


def _finish(rows, pooled, device, dtype) -> SVDInputs:
    s, v, d = (torch.stack(x).to(dtype) for x in zip(*rows))
    return SVDInputs(s, v, d, torch.stack(pooled).to(dtype))


def sdxl_inputs(positive: PromptFeatures, negative: PromptFeatures | None = None, *, device=None,
                dtype=torch.bfloat16, text_dim: int = SDXL_TEXT_DIM, pooled_dim: int = SDXL_POOLED,
                clip_tokens: int = CLIP_TOKENS) -> SVDInputs:
    """SDXL recipe. `negative` is ignored: the official pipeline always uses a zero negative (tokens and pooled)."""
    _check(positive, "positive", text_dim, pooled_dim, clip_tokens, "SDXL")
    tokens = positive.tokens[:, :clip_tokens].to(device)
    pooled = positive.pooled.to(device)
    rows, pools = [], []
    for b in range(tokens.shape[0]):
        a = torch.cat([torch.zeros_like(tokens[b]), tokens[b]], dim=0)  # [neg(0); pos] → [154, 2048]
        rows.append(svd_rows(a))
        pools.append(torch.cat([torch.zeros_like(pooled[b]), pooled[b]], dim=0))  # [2560]
    return _finish(rows, pools, device, dtype)


def clip_rows(t: torch.Tensor, clip_tokens: int = CLIP_TOKENS, clip_width: int = SD35_CLIP_WIDTH) -> int:
    """How many leading rows of SD3 tokens [B, T, D] are CLIP rows: the rows whose columns from clip_width on are
    zero (ComfyUI pads CLIP-L ‖ CLIP-G to the T5 width), a multiple of clip_tokens. Where the features have no such
    padding (not ComfyUI's SD3 layout), clip_tokens."""
    if t.shape[-1] <= clip_width:
        return clip_tokens
    padded = (t[..., clip_width:] == 0).all(dim=-1).all(dim=0)  # [T]
    n = int(padded.long().cumprod(0).sum())
    return n if n >= clip_tokens and n % clip_tokens == 0 else clip_tokens


def _sd35_tokens(t: torch.Tensor, clip_tokens: int, t5_tokens: int) -> torch.Tensor:
    """[CLIP (first chunk, clip_tokens rows); T5 (t5_tokens rows: truncated, or padded with copies of its last row)]."""
    start = clip_rows(t, clip_tokens)
    clip, t5 = t[:, :clip_tokens], t[:, start:start + t5_tokens]
    missing = t5_tokens - t5.shape[1]
    if missing > 0 and t5.shape[1] > 0:
        t5 = torch.cat([t5, t5[:, -1:].expand(-1, missing, -1)], dim=1)
    elif missing > 0:  # no T5 part at all (SD3 without its T5 encoder): nothing to copy
        t5 = t.new_zeros(t.shape[0], t5_tokens, t.shape[-1])
    return torch.cat([clip, t5], dim=1)


def sd35_inputs(positive: PromptFeatures, negative: PromptFeatures | None, *, device=None, dtype=torch.bfloat16,
                text_dim: int = SD35_TEXT_DIM, pooled_dim: int = SD35_POOLED, clip_tokens: int = CLIP_TOKENS,
                t5_tokens: int = SD35_T5_TOKENS) -> SVDInputs:
    """SD3.5 recipe. `negative` should be the EMPTY-prompt encoding (what the official code uses).

    ComfyUI SD3 tokens are [CLIP-L‖CLIP-G padded to 4096 (77 per 75-token chunk); T5 tokens]: the CLIP part is
    truncated to its first `clip_tokens` rows, as the official tokenizers do, and T5 starts after the last CLIP row.
    """
    _check(positive, "positive", text_dim, pooled_dim, clip_tokens, "SD3.5")
    if negative is None:
        raise ValueError("CoRe² official SD3.5 weak model needs a negative conditioning: connect the encoding of an "
                         "EMPTY prompt (the official weights were trained with negative_prompt=\"\").")
    _check(negative, "negative", text_dim, pooled_dim, clip_tokens, "SD3.5")
    b = positive.tokens.shape[0]
    negative = negative.expand(b) if negative.tokens.shape[0] != b else negative
    pos = _sd35_tokens(positive.tokens.to(device), clip_tokens, t5_tokens)
    neg = _sd35_tokens(negative.tokens.to(device), clip_tokens, t5_tokens)
    pp, pn = positive.pooled.to(device), negative.pooled.to(device)
    rows, pools = [], []
    for i in range(b):
        rows.append(svd_rows(torch.cat([pos[i], neg[i]], dim=0)))  # [pos; neg] → [666, 4096]
        pools.append(torch.cat([pp[i], pn[i]], dim=0))  # [4096]
    return _finish(rows, pools, device, dtype)


def inputs_for(cfg, positive: PromptFeatures, negative: PromptFeatures | None, *, device=None, dtype=torch.bfloat16,
               clip_tokens: int = CLIP_TOKENS) -> SVDInputs:
    """The recipe of `cfg.variant` with the sizes of that net (net.NetConfig): T = 2·tokens per prompt, P = 2·pooled."""
    per_prompt = cfg.text_tokens // 2
    if cfg.variant == "sdxl":
        return sdxl_inputs(positive, negative, device=device, dtype=dtype, text_dim=cfg.text_dim,
                           pooled_dim=cfg.pool_dim // 2, clip_tokens=per_prompt)
    if cfg.variant == "sd35":
        return sd35_inputs(positive, negative, device=device, dtype=dtype, text_dim=cfg.text_dim,
                           pooled_dim=cfg.pool_dim // 2, clip_tokens=clip_tokens, t5_tokens=per_prompt - clip_tokens)
    raise ValueError(f"no prompt recipe for variant {cfg.variant!r}")
