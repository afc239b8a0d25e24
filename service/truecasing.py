"""Recasing of English input typed in one case throughout: ALL CAPS, all lower, Title Case Per Word.

The translator's subword model and network were trained on normally cased text. Typed in
capitals, a sentence splits into several times as many subwords (unseen upper-case pieces) and
the translation falls apart; Title Case and lower case cost less but still cost. When a text's
casing is degenerate in one of those three ways, each word is recased to its most frequent form
in the training source side (a table learned from train.en only and shipped beside the model),
and a word that starts a sentence is capitalised. In text with ordinary mixed casing only a word
of three or more letters typed in capitals for emphasis ("A DOG runs on the BEACH.", which came
back as "Ein „CACO-Stame rennt ...") is recased, where the table's form of it is not capitals
(an acronym's is); everything else passes through unchanged (no val or test_2016_flickr source
has such a word, so their translations do not change).

A table lookup per word, not a library: Moses' truecaser (sacremoses) works on Moses-tokenised
text, so raw input would need a tokenise/detokenise round trip that alters the raw text the
subword model was trained on, and it would never recase a normally typed sentence differently
from this table anyway. The check that decides whether to recase costs two C-level string
comparisons and one regular-expression search for normally typed text.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

Casing = Literal["upper", "lower", "title"]

_WORD = re.compile(r"[^\W\d_]+")  # a run of letters: "T-shirt" is "T" and "shirt", "don't" is "don" and "t"
_SENTENCE_END = frozenset(".!?")
_SHOUTED = re.compile(r"[A-Z]{3}")  # a cheap first look for a word in capitals within mixed-case text


def casing_of(text: str) -> Casing | None:
    """How a text is degenerately cased, or None when its casing is ordinary (mixed).

    upper: no lower-case letter; lower: no upper-case letter; title: at least two words start
    with a letter, and every such word starts upper-case while the text has lower-case letters.
    """
    has_upper, has_lower = text != text.lower(), text != text.upper()
    if has_upper != has_lower:
        return "upper" if has_upper else "lower"
    if not has_upper:
        return None  # no cased letters at all
    starts = [word[0] for word in text.split() if word[0].isalpha()]
    if len(starts) >= 2 and all(c.isupper() for c in starts):
        return "title"
    return None


def _words(text: str) -> Iterator[tuple[re.Match[str], bool]]:
    """Each letter run and whether it starts a sentence (first word, or first after . ! ?).

    A digit before a word means it does not start the sentence ("2 men stand ...").
    """
    initial, pos = True, 0
    for match in _WORD.finditer(text):
        for ch in text[pos : match.start()]:
            if ch in _SENTENCE_END:
                initial = True
            elif ch.isalnum():
                initial = False
        yield match, initial
        initial, pos = False, match.end()


class Truecaser:
    """Word casing table: lower-cased word -> its most frequent form in the training text."""

    def __init__(self, forms: Iterable[str]) -> None:
        self.forms = {form.lower(): form for form in forms}

    @classmethod
    def learn(cls, sentences: Iterable[str]) -> Truecaser:
        """Count each word's forms where its casing is its own (not capitalised for starting a
        sentence); a word seen only sentence-initially keeps an unusual form ("USA") and is
        otherwise taken as lower case."""
        inside: dict[str, Counter[str]] = {}
        initial_only: dict[str, Counter[str]] = {}
        for sentence in sentences:
            for match, initial in _words(sentence):
                word = match.group()
                (initial_only if initial else inside).setdefault(word.lower(), Counter())[word] += 1
        forms = [counts.most_common(1)[0][0] for counts in inside.values()]
        for key, counts in initial_only.items():
            if key not in inside:
                form = counts.most_common(1)[0][0]
                forms.append(key if form == key.capitalize() else form)
        return cls(forms)

    @classmethod
    def load(cls, path: Path) -> Truecaser:
        lines = path.read_text(encoding="utf-8").splitlines()
        return cls(line for line in lines if line and not line.startswith("#"))

    def save(self, path: Path) -> None:
        header = "# seqserve truecaser: each training word's most frequent form, one a line (service/truecasing.py)\n"
        path.write_text(header + "".join(f"{self.forms[k]}\n" for k in sorted(self.forms)), encoding="utf-8")

    def __len__(self) -> int:
        return len(self.forms)

    def __call__(self, text: str) -> str:
        """The text recased when its casing is degenerate (see ``casing_of``); in text cased
        normally, only words of three or more letters typed in capitals for emphasis ("A DOG runs
        on the BEACH.") whose usual form is not all capitals (an acronym's is: "USA" stays);
        anything else unchanged."""
        casing = casing_of(text)
        if casing is None and _SHOUTED.search(text) is None:
            return text
        parts: list[str] = []
        pos = 0
        for match, initial in _words(text):
            word = match.group()
            known = self.forms.get(word.lower())
            if casing is None:  # only a shouted word that is usually not in capitals
                if len(word) < 3 or not word.isupper() or known is None or known.isupper():
                    continue
                form = known
            else:  # an unknown word keeps its form, except that all-caps text carries no casing at all
                form = known or (word.lower() if casing == "upper" else word)
            if initial:
                form = form[:1].upper() + form[1:]
            parts += (text[pos : match.start()], form)
            pos = match.end()
        parts.append(text[pos:])
        return "".join(parts)
