"""The ways people type the same sentence: the variants of the robustness table and of case augmentation.

Each variant is a pure function of the text, so training (augmentation) and evaluation (the table
in the model card) transform sentences the same way.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence

_FINAL_PUNCT = re.compile(r"[\s.!?…]+$")


def upper(text: str) -> str:
    return text.upper()


def lower(text: str) -> str:
    return text.lower()


def title(text: str) -> str:
    """Every word capitalised ("A Man In A Red Shirt."), as headlines and some keyboards type it."""
    return " ".join(word[:1].upper() + word[1:] for word in text.split(" "))


def no_final_punctuation(text: str) -> str:
    return _FINAL_PUNCT.sub("", text)


VARIANTS: dict[str, Callable[[str], str]] = {
    "given": lambda text: text,
    "upper": upper,
    "lower": lower,
    "title": title,
    "no_final_punct": no_final_punctuation,
}

# Source-side augmentation mix (the target keeps its normal German casing): shares of training pairs
# whose source is shown as each variant in an epoch, the rest as given.
AUGMENT_SHARES: dict[str, float] = {"lower": 0.4, "upper": 0.2, "title": 0.2, "no_final_punct": 0.2}


def augment_choices(count: int, rate: float, rng: random.Random) -> list[str]:
    """For each of ``count`` pairs, the variant its source takes this epoch ("given" for most)."""
    names: Sequence[str] = list(AUGMENT_SHARES)
    weights = [AUGMENT_SHARES[n] for n in names]
    return [rng.choices(names, weights)[0] if rng.random() < rate else "given" for _ in range(count)]
