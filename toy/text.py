"""The toy world's text encoder: a fixed-vocabulary word tokenizer and a small learned embedding.

Plain torch, no ComfyUI. Output shapes match ComfyUI CONDITIONING: token embeddings [B, T, D] and a pooled
vector [B, D]. The empty prompt (all padding) is the unconditional prompt the model was trained with.
"""
from __future__ import annotations

import logging
import re

import torch

from . import data

MAX_TOKENS = 16
WIDTH = 64  # token width D (the UNet's context_dim) and pooled width
PAD, UNK = "<pad>", "<unk>"
VOCAB = (PAD, UNK, "a", "an", "the", "at", "on", "in", "of", "and", "with", "picture", "image", "photo",
         "shape", "small", "big", "large", "bright", "dark", "background",
         *data.SHAPES, *data.COLOUR_NAMES, *data.POSITIONS)
_INDEX = {w: i for i, w in enumerate(VOCAB)}
_SYNONYMS = {"center": "centre", "middle": "centre", "upper": "top", "lower": "bottom"}

log = logging.getLogger(__name__)


def words(prompt: str) -> list[str]:
    return [_SYNONYMS.get(w, w) for w in re.findall(r"[a-z]+", prompt.lower())]


def tokenize(prompt: str) -> torch.Tensor:
    """[MAX_TOKENS] long token ids; unknown words map to <unk>, longer prompts are cut."""
    ws = words(prompt)
    if len(ws) > MAX_TOKENS:
        log.warning("toy text encoder: prompt has %d words, only the first %d are used", len(ws), MAX_TOKENS)
        ws = ws[:MAX_TOKENS]
    ids = [_INDEX.get(w, _INDEX[UNK]) for w in ws]
    return torch.tensor(ids + [_INDEX[PAD]] * (MAX_TOKENS - len(ids)), dtype=torch.long)


def tokenize_batch(prompts: list[str]) -> torch.Tensor:
    return torch.stack([tokenize(p) for p in prompts])


class ToyTextEncoder(torch.nn.Module):
    """Word embedding + position embedding + LayerNorm; pooled = mean over the prompt's words (padding if empty)."""

    def __init__(self, width: int = WIDTH, max_tokens: int = MAX_TOKENS):
        super().__init__()
        self.word = torch.nn.Embedding(len(VOCAB), width)
        self.position = torch.nn.Parameter(torch.zeros(max_tokens, width))
        self.norm = torch.nn.LayerNorm(width)
        torch.nn.init.normal_(self.word.weight, std=1.0)
        torch.nn.init.normal_(self.position, std=0.2)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.norm(self.word(ids) + self.position[None, : ids.shape[1]])
        used = (ids != _INDEX[PAD]).float()[..., None]
        used = torch.where(used.sum(1, keepdim=True) > 0, used, torch.ones_like(used))  # empty prompt: mean of pads
        pooled = (tokens * used).sum(1) / used.sum(1)
        return tokens, pooled

    @torch.no_grad()
    def encode(self, prompts: list[str] | str) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(prompts, str):
            prompts = [prompts]
        p = next(self.parameters())
        return self(tokenize_batch(prompts).to(p.device))
