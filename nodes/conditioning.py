"""Prompt features for weak models from ComfyUI conditioning (CONDITIONING lists or processed cond dicts)."""
from __future__ import annotations


from ..core2.weak import PromptFeatures


def _first(cond):
    """The entry to take features from: the first of a CONDITIONING list ([tensor, dict]) or a processed cond list (dicts)."""
    if cond is None or len(cond) == 0:
        return None
    return cond[0]


def features(cond) -> PromptFeatures | None:
    """Token embeddings and pooled vector of a conditioning; None when there is none.

    Where a conditioning has several entries (area, mask, timestep ranges), the first one is used: the weak model
    needs the prompt's text, not its layout.
    """
    c = _first(cond)
    if c is None:
        return None
    if isinstance(c, dict):  # processed by ComfyUI (convert_cond): cross_attn + original keys
        tokens, extras = c.get("cross_attn"), c
        if tokens is None and "model_conds" in c and "c_crossattn" in c["model_conds"]:
            tokens = c["model_conds"]["c_crossattn"].cond
    else:  # raw CONDITIONING entry [tensor, dict]
        tokens, extras = c[0], c[1]
    if tokens is None:
        return None
    pooled = extras.get("pooled_output")
    if tokens.ndim == 2:
        tokens = tokens[None]
    if pooled is not None and pooled.ndim == 1:
        pooled = pooled[None]
    return PromptFeatures(tokens.detach(), None if pooled is None else pooled.detach())


def has_negative(cond) -> bool:
    return cond is not None and len(cond) > 0


__all__ = ["features", "has_negative"]
