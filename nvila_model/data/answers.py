"""How an answer is compared: the one normalisation that evaluation scores by, which the generator's answer sets must
survive. Kept free of heavy imports, so the data settings can check a vocabulary against it."""

from __future__ import annotations

import re

NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve".split())}
ARTICLES = frozenset({"a", "an", "the"})


def normalise(text: str) -> str:
    """Lower-case, drop punctuation and articles, spell numbers as digits."""
    words = re.sub(r"[^a-z0-9 ]", " ", text.lower()).split()
    return " ".join(NUMBER_WORDS.get(w, w) for w in words if w not in ARTICLES)


def exact_match(prediction: str, answer: str) -> bool:
    return normalise(prediction) == normalise(answer)
