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

log = logging.getLogger(__name__)


def words(prompt: str, synonyms: dict | None = None) -> list[str]:
    synonyms = data.SYNONYMS if synonyms is None else synonyms
    return [w for w in (synonyms.get(w, w) for w in re.findall(r"[a-z]+", prompt.lower())) if w]


def tokenize(prompt: str, vocab: tuple = VOCAB, synonyms: dict | None = None) -> torch.Tensor:
    """[MAX_TOKENS] long token ids; unknown words map to <unk>, longer prompts are cut."""
    index = {w: i for i, w in enumerate(vocab)} if vocab is not VOCAB else _INDEX
    ws = words(prompt, synonyms)
    if len(ws) > MAX_TOKENS:
        log.warning("toy text encoder: prompt has %d words, only the first %d are used", len(ws), MAX_TOKENS)
        ws = ws[:MAX_TOKENS]
    ids = [index.get(w, index[UNK]) for w in ws]
    return torch.tensor(ids + [index[PAD]] * (MAX_TOKENS - len(ids)), dtype=torch.long)


def tokenize_batch(prompts: list[str], vocab: tuple = VOCAB, synonyms: dict | None = None) -> torch.Tensor:
    return torch.stack([tokenize(p, vocab, synonyms) for p in prompts])


class ToyTextEncoder(torch.nn.Module):
    """Word embedding + position embedding + LayerNorm, then `context_layers` small transformer layers (each word sees
    the others, as in CLIP/T5; 0 for the shapes world); pooled = mean over the prompt's words (padding if empty)."""

    def __init__(self, width: int = WIDTH, max_tokens: int = MAX_TOKENS, vocab: tuple = VOCAB,
                 synonyms: dict | None = None, context_layers: int = 0):
        """vocab: the world's words (PAD first, UNK second); synonyms: words read as others ('' drops a word)."""
        super().__init__()
        if vocab[:2] != (PAD, UNK):
            raise ValueError("a toy vocabulary starts with <pad>, <unk>")
        self.vocab, self.synonyms = tuple(vocab), synonyms
        self.word = torch.nn.Embedding(len(vocab), width)
        self.position = torch.nn.Parameter(torch.zeros(max_tokens, width))
        self.norm = torch.nn.LayerNorm(width)
        torch.nn.init.normal_(self.word.weight, std=1.0)
        torch.nn.init.normal_(self.position, std=0.2)
        self.context = torch.nn.ModuleList(_context_layer(width) for _ in range(context_layers))

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.norm(self.word(ids) + self.position[None, : ids.shape[1]])
        for layer in self.context:
            tokens = layer(tokens)
        used = (ids != 0)  # <pad> is id 0 in every vocabulary
        used = used.float()[..., None]
        used = torch.where(used.sum(1, keepdim=True) > 0, used, torch.ones_like(used))  # empty prompt: mean of pads
        pooled = (tokens * used).sum(1) / used.sum(1)
        return tokens, pooled

    @torch.no_grad()
    def encode(self, prompts: list[str] | str) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(prompts, str):
            prompts = [prompts]
        p = next(self.parameters())
        return self(tokenize_batch(prompts, self.vocab, self.synonyms).to(p.device))


def _context_layer(width: int) -> torch.nn.Module:
    """A pre-norm transformer layer that starts as the identity (zero output projections), so that it can be added
    to a trained encoder without changing what it says."""
    layer = torch.nn.TransformerEncoderLayer(width, nhead=4, dim_feedforward=2 * width, dropout=0.0,
                                             batch_first=True, norm_first=True)
    for proj in (layer.self_attn.out_proj, layer.linear2):
        torch.nn.init.zeros_(proj.weight)
        torch.nn.init.zeros_(proj.bias)
    return layer
