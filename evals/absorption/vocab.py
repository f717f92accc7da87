"""The words of the first-letter task: the tokenizer's single-token alphabetic words.

As SAEBench's `get_alpha_tokens`: every vocabulary entry whose text (after the tokenizer's own
conversion, so GPT-2-style "Ġcat" reads " cat") is ASCII letters, with at most one leading space.
A word's label is its first letter, lower-cased. Each word is one token, so the prompt can be
built from ids and the word's position is known exactly, whatever the tokenizer merges.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

LETTERS = "abcdefghijklmnopqrstuvwxyz"
_ALPHA = frozenset(LETTERS + LETTERS.upper())


@dataclass(frozen=True)
class Word:
    token_id: int
    text: str  # as the tokenizer writes it, leading space kept (" cat")

    @property
    def letter(self) -> str:
        return self.text.strip()[0].lower()


def is_alphabetic(text: str) -> bool:
    """ASCII letters only, after at most one leading space."""
    if text.startswith(" "):
        text = text[1:]
    return bool(text) and all(c in _ALPHA for c in text)


def alphabetic_words(tokenizer: Any) -> list[Word]:
    """Every single-token alphabetic word of `tokenizer`, sorted by token id (special tokens left out)."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    out = []
    for tok, i in tokenizer.get_vocab().items():
        if i in special:
            continue
        text = tokenizer.convert_tokens_to_string([tok])
        if is_alphabetic(text):
            out.append(Word(int(i), text))
    return sorted(out, key=lambda w: w.token_id)


def sample_words(words: list[Word], n: int, seed: int = 0) -> list[Word]:
    """A seeded sample of `n` words (all of them when n <= 0 or n >= len), in token-id order."""
    if n <= 0 or n >= len(words):
        return list(words)
    picked = random.Random(seed).sample(range(len(words)), n)
    return [words[i] for i in sorted(picked)]
