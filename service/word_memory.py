"""A text's subword ids as its words' ids, remembered: each word normalised and encoded once.

Every request's text is normalised (service/tokenization.py) and encoded by sentencepiece on the
event loop: ~15 µs a SST-2 sentence warm, more between model runs, most of it the normaliser's
Python (and sentencepiece's binding lets go of the GIL on every call, 0.2.x, pybind11). Texts
rarely repeat, words do, as spaCy's tokenizer also relies on (it caches each space-separated
substring's tokens). For printable ASCII text, tokenising word by word gives the ids of tokenising
the whole text:

- The normalisers' rules look no further than a word's own characters: a quote opens at a word's
  start and closes at its end, clitics, negations and corpus markup sit inside a word, punctuation
  is split off where it stands, and no rule makes or joins spaces. So a text's normalised form is
  its words' normalised forms, one space apart. Not so with a truecaser, which reads a word's case
  by its place in the sentence: such a tokenizer does not remember words.
- sentencepiece's ids of a normalised text are its words' ids one after another when no piece of
  the vocabulary spans two words, which holds when no piece has the word boundary "▁" anywhere
  but first (trained with ``split_by_whitespace``, sentencepiece's default and export/'s): a
  unigram model's best segmentation of the text is then its words' best ones, and BPE merges only
  within a word. The constructor checks the vocabulary, and a text of every printable ASCII
  character, and remembers nothing if either fails.

tests/test_word_memory.py checks the ids against the whole pipeline's on both corpora and on
random ASCII text. Any other text (a character beyond ASCII, a control character) is normalised
and encoded whole, as before. docs/benchmarks.md (stop 55) has what it saves and costs.
"""

from __future__ import annotations

import itertools
import string
from collections.abc import Callable

import sentencepiece as spm

WORD_START = "▁"
# every printable ASCII character alone, then in words: what may come to be encoded word by word
_PROBE = " ".join([*string.printable[:94], "The quick brown fox's 12 tails, (really)!", "don't", "a-b", "x.y"])


class WordMemory:
    """``encode(text)``: the ids of a raw text, from its words' remembered ids (the module's
    docstring), or None for a text that must be tokenised whole.

    It keeps up to ``capacity`` words of at most ``longest`` characters (~7 MB at the defaults).
    A full memory forgets the older half of what it holds: text that fills it with words never
    seen again costs their tokenising, not memory."""

    def __init__(self, processor: spm.SentencePieceProcessor, normalize: Callable[[str], str],
                 capacity: int = 32_768, longest: int = 40) -> None:
        self._processor = processor
        self._normalize = normalize
        self.capacity = capacity
        self.longest = longest
        self._ids: dict[str, tuple[int, ...]] = {}
        pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
        self.enabled = (not any(WORD_START in piece[1:] for piece in pieces)
                        and self._encode(_PROBE) == [i for word in _PROBE.split(" ") for i in self._encode(word)])

    def __len__(self) -> int:
        """How many words it remembers."""
        return len(self._ids)

    def __contains__(self, word: str) -> bool:
        return word in self._ids

    def _encode(self, normalized: str) -> list[int]:
        ids: list[int] = self._processor.encode(normalized, out_type=int)
        return ids

    def encode(self, text: str) -> list[int] | None:
        if not (self.enabled and text.isascii() and text.isprintable()):
            return None
        words = text.split()
        known = self._ids
        ids: list[int] = []
        for word in words:
            word_ids = known.get(word)
            if word_ids is None:
                return self._learn(words)
            ids += word_ids
        return ids

    def _learn(self, words: list[str]) -> list[int] | None:
        """The ids of a text with words not remembered, and theirs remembered: each new word
        normalised and encoded alone, so that its ids are the same in every text."""
        known = self._ids
        new = {word: tuple(self._encode(self._normalize(word))) for word in words if word not in known}
        text_ids: list[int] = []
        for word in words:
            word_ids = new[word] if word in new else known.get(word)
            if word_ids is None:  # forgotten meanwhile (by another thread filling the memory)
                return None
            text_ids += word_ids
        keep = [(word, word_ids) for word, word_ids in new.items() if len(word) <= self.longest][:self.capacity]
        over = len(known) + len(keep) - self.capacity
        if over > 0:  # forget the older half at least (a dict keeps its insertion order)
            for word in list(itertools.islice(known, max(over, len(known) // 2))):
                known.pop(word, None)
        known.update(keep)
        return text_ids
