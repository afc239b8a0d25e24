"""A text of several sentences, translated sentence by sentence and joined again.

The translator was trained on Multi30k, one caption a line. Given a paragraph as one input it
translated part of it and dropped the rest without a word ("A woman is cooking. Two dogs play
in the snow." came back as "Eine Frau kocht im Schnee."). So a text is split into sentences
(pysbd: rule-based, English abbreviations and decimals, "Mr. Smith" and "3.5 km" stay whole),
each sentence is its own decoder job, batched with all others, and one text's outputs are joined
into one answer: the target subwords one after another (sentencepiece puts the word boundary
back between them), the source subwords likewise (each sentence with its own ``</s>``), the
attention block-diagonal (each sentence's rows over its own columns: rows still sum to 1), and
the score as for one sequence, ``sum(log p) / (subwords + one </s> per sentence) ** alpha``.

Splitting costs ~350 us of the event loop, so it runs only where a sentence end is followed by
more text; a one-sentence text (nearly every caption) pays one regular-expression search.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import pysbd

from service.runners.translation import TranslationJob, TranslationOutput

# a sentence end (. ! ? ...) with its closing quotes or brackets, then more text
_MAYBE_SEVERAL = re.compile(r"[.!?\u2026][\"'\u201d\u2019)\]]*\s+\S")


@cache
def _segmenter() -> pysbd.Segmenter:
    return pysbd.Segmenter(language="en", clean=False)


def sentences(text: str) -> list[str]:
    """The sentences of ``text``, stripped; ``[text]`` for one sentence."""
    if _MAYBE_SEVERAL.search(text) is None:
        return [text]
    parts = [part.strip() for part in _segmenter().segment(text)]
    return [part for part in parts if part] or [text]


@dataclass
class SentencesJob(TranslationJob):
    """One text of several sentences: ``sentences`` are the jobs the engine decodes; ``src_ids``
    is theirs joined, one attention column each, as the answer's ``source_tokens`` lists them."""

    sentences: list[TranslationJob] = field(default_factory=list)


def joined(job: SentencesJob, outputs: list[TranslationOutput], length_penalty: float) -> TranslationOutput:
    """One answer for the text from its sentences' answers (``length_penalty``: the exponent the
    sentences were scored with)."""
    best = _join([(out.tokens, out.score) for out in outputs], length_penalty)
    attention = None
    if all(out.attention is not None for out in outputs):
        widths = [len(sentence.src_ids) for sentence in job.sentences]
        attention = np.zeros((len(best[0]), sum(widths)), np.float32)
        row = col = 0
        for out, width in zip(outputs, widths, strict=True):
            assert out.attention is not None
            attention[row:row + len(out.tokens), col:col + width] = out.attention[:, :width]
            row, col = row + len(out.tokens), col + width
    hypotheses = None
    if all(out.hypotheses for out in outputs):
        # the i-th alternative joins each sentence's i-th best (its last where a search closed fewer)
        count = max(len(out.hypotheses or []) for out in outputs)
        hypotheses = [_join([(out.hypotheses or [])[min(i, len(out.hypotheses or []) - 1)] for out in outputs],
                            length_penalty) for i in range(count)]
    return TranslationOutput(tokens=best[0], score=best[1], attention=attention, hypotheses=hypotheses)


def _join(parts: list[tuple[list[int], float]], length_penalty: float) -> tuple[list[int], float]:
    """Tokens one after another; the score of the whole from each part's log-probability, which
    its length-normalised score and its length (with its </s>) give back."""
    tokens = [token for part, _ in parts for token in part]
    log_prob = sum(score * (len(part) + 1) ** length_penalty for part, score in parts)
    return tokens, log_prob / (len(tokens) + len(parts)) ** length_penalty
