"""The scenes world's words, for toy/text.py's encoder (same layers as v1's, another vocabulary). Plain torch."""
from __future__ import annotations

from .. import text
from . import data

VOCAB = (text.PAD, text.UNK, "a", "an", "of", "left", "right", "above", "below",
         *data.SIZES, *data.COLOUR_NAMES, *data.SHAPES)
SYNONYMS = {"large": "big", "tiny": "small", "the": "", "to": "", "on": ""}


def encoder() -> text.ToyTextEncoder:
    return text.ToyTextEncoder(vocab=VOCAB, synonyms=SYNONYMS)
