"""The scenes world's words, for toy/text.py's encoder (same layers as v1's, another vocabulary). Plain torch."""
from __future__ import annotations

from .. import text
from . import data

VOCAB = (text.PAD, text.UNK, "a", "an", "of", "left", "right", "above", "below",
         *data.SIZES, *data.COLOUR_NAMES, *data.SHAPES)
SYNONYMS = data.SYNONYMS  # the prompt parser's (its "center" → "centre" maps one unknown word to another)


def encoder() -> text.ToyTextEncoder:
    return text.ToyTextEncoder(vocab=VOCAB, synonyms=SYNONYMS)
