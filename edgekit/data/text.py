"""Partial text hints about a digit, and the small deterministic word tokenizer that ships with them.

A hint states one or two facts (parity, primality, size, loops, stroke shape) or nothing useful, so
text alone narrows the label down but never decides it: fusion has to do the rest."""

from __future__ import annotations

import re
from importlib import resources

import numpy as np

PAD, CLS, UNK = 0, 1, 2

_FACTS: dict[str, tuple[frozenset[int], str, str]] = {
    # name: (digits for which it holds, phrase if true, phrase if false)
    "parity": (frozenset({0, 2, 4, 6, 8}), "an even number", "an odd number"),
    "prime": (frozenset({2, 3, 5, 7}), "a prime number", "not a prime number"),
    "size": (frozenset({0, 1, 2, 3, 4}), "smaller than five", "five or larger"),
    "loop": (frozenset({0, 6, 8, 9}), "drawn with a closed loop", "drawn without a closed loop"),
    "strokes": (frozenset({1, 4, 7}), "made of straight strokes only", "made with curved strokes"),
}
_TEMPLATES = ("it is {}", "the digit is {}", "this one is {}", "{}", "a number that is {}")
_NO_HINT = ("a handwritten digit", "someone says a number", "guess the digit", "no clue given")


def hint(label: int, rng: np.random.Generator, p_uninformative: float = 0.25) -> str:
    if rng.random() < p_uninformative:
        return str(rng.choice(_NO_HINT))
    names = rng.choice(list(_FACTS), size=int(rng.integers(1, 3)), replace=False)
    phrases = [(_FACTS[n][1] if label in _FACTS[n][0] else _FACTS[n][2]) for n in names]
    return str(rng.choice(_TEMPLATES)).format(" and ".join(phrases))


class WordTokenizer:
    """Lower-cased word-level tokenizer over the shipped vocabulary; [CLS] first, [PAD] = 0."""

    def __init__(self, vocab: list[str] | None = None) -> None:
        if vocab is None:
            vocab = resources.files("edgekit.data").joinpath("vocab.txt").read_text().split()
        self.vocab = vocab
        self.index = {w: i for i, w in enumerate(vocab)}

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (ids, mask), both int64 of length max_len; mask is 1 on real tokens."""
        words = re.findall(r"[a-z0-9]+", text.lower())
        ids = [CLS, *(self.index.get(w, UNK) for w in words)][:max_len]
        out = np.full(max_len, PAD, np.int64)
        out[: len(ids)] = ids
        return out, (out != PAD).astype(np.int64)
