"""The scenes world's words, for toy/text.py's encoder (same layers as v1's plus one context layer, another
vocabulary). Plain torch.

The encoder reads the prompt parser's synonyms and also reads "a", "an" and "of" as nothing, so every prompt becomes
seven words in fixed places (size colour shape relation size colour shape); the context layer lets the relation word
reach the objects' words, as a real text encoder's context does. Binding "red" to the left object is still the image
model's job.
"""
from __future__ import annotations

from .. import text
from . import data

VOCAB = (text.PAD, text.UNK, "a", "an", "of", "left", "right", "above", "below",
         *data.SIZES, *data.COLOUR_NAMES, *data.SHAPES)
SYNONYMS = {**data.SYNONYMS, "a": "", "an": "", "of": ""}
CONTEXT_LAYERS = 1


def encoder() -> text.ToyTextEncoder:
    return text.ToyTextEncoder(vocab=VOCAB, synonyms=SYNONYMS, context_layers=CONTEXT_LAYERS)
