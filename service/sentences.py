"""A text of several sentences, translated sentence by sentence and joined again.

The translator was trained on Multi30k, one caption a line. Given a paragraph as one input it
translated part of it and dropped the rest without a word ("A woman is cooking. Two dogs play
in the snow." came back as "Eine Frau kocht im Schnee."). So a text is split into sentences,
each sentence is its own decoder job, batched with all others, and one text's outputs are joined
into one answer: the target subwords one after another (sentencepiece puts the word boundary
back between them), the source subwords likewise (each sentence with its own ``</s>``), the
attention block-diagonal (each sentence's rows over its own columns: rows still sum to 1), and
the score as for one sequence, ``sum(log p) / (its normalised lengths) ** alpha``.

The split follows the rules of Moses' split-sentences.perl, as MT pipelines have long used:
after ``. ! ?`` or an ellipsis (and closing quotes or brackets), before whitespace and a word
that starts with a capital or a digit (any letter in text typed all in lower case), except
after a non-breaking prefix ("Mr.", "Dr.", "St.", "e.g.", an initial "J.", "No." before a
number) or a word with a full stop inside ("U.S."). It runs on the event loop, so it is one
linear pass that only cuts the text, never rewrites it: pysbd (its pieces rewritten, and
characters of some inputs lost: "A dog runs. A cat sits ??!" came back without its "!") took
~350 us for two short sentences and 350-550 ms for a 2,000-character text of short ones, and
Python's port of the Moses splitter (sentence-splitter) ~290 us and 25 ms. A one-sentence text
(nearly every caption) pays one regular-expression search.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from service.runners.translation import TranslationJob, TranslationOutput
from service.tokenization import has_content

# a sentence end (. ! ? ...) with its closing quotes or brackets, then more text
_MAYBE_SEVERAL = re.compile(r"[.!?\u2026][\"'\u201d\u2019)\]]*\s+\S")
# a candidate end: its punctuation and closing quotes or brackets, before whitespace and the next
# word (its opening quotes or brackets, and its first character, to be judged)
_CANDIDATE = re.compile(r"([.!?\u2026]+)[\"'\u201d\u2019)\]\u00bb]*"
                        r"(?=\s+[\"'\u201c\u2018(\[\u00ab\u00bf\u00a1]*(\S))")
# Moses' English non-breaking prefixes (nonbreaking_prefix.en): titles and abbreviations a full
# stop follows inside a sentence; the second set only before a number ("No. 5")
_PREFIXES = frozenset("""Adj Adm Adv Asst Bart Bldg Brig Bros Capt Cmdr Col Comdr Con Corp Cpl DR Dr Drs Ens Gen
    Gov Hon Hr Hosp Insp Lt MM MR MRS MS Maj Messrs Mlle Mme Mr Mrs Ms Msgr Op Ord Pfc Ph Prof Pvt Rep Reps Res
    Rev Rt Sen Sens Sfc Sgt Sr St Supt Surg v vs i.e rev e.g Jr Mt Ave Blvd etc approx""".split())
_BEFORE_NUMBERS = frozenset("No Nos Art Nr pp p".split())


def sentences(text: str) -> list[str]:
    """The sentences of ``text``, stripped; ``[text]`` for one sentence. Cut only, never rewritten:
    the parts hold every character of the text but the whitespace between them. A part that
    holds nothing the model reads (invisible characters) stays with its neighbour."""
    if _MAYBE_SEVERAL.search(text) is None:
        return [text]
    any_case = not any(c.isupper() for c in text)  # typed in lower case: any letter may start one
    parts: list[str] = []
    start = 0
    for match in _CANDIDATE.finditer(text):
        end, first = match.end(), match.group(2)
        if not (first.isupper() or first.isdigit() or (any_case and first.isalpha())):
            continue
        if match.group(1) == ".":
            begin = match.start()  # the word before the full stop: a backward scan, not a search from 0
            while begin > start and not text[begin - 1].isspace():
                begin -= 1
            prefix = text[begin:match.start()].lstrip("\"'([\u201c\u2018")
            if (prefix in _PREFIXES or (len(prefix) == 1 and prefix.isupper())
                    or ("." in prefix and any(c.isalpha() for c in prefix))
                    or (prefix in _BEFORE_NUMBERS and first.isdigit())):
                continue
        part = text[start:end].strip()
        if has_content(part) and has_content(text[end:]):
            parts.append(part)
            start = end
    if not parts:
        return [text]
    parts.append(text[start:].strip())
    return parts


@dataclass
class SentencesJob(TranslationJob):
    """One text of several sentences: ``sentences`` are the jobs the engine decodes; ``src_ids``
    is theirs joined, one attention column each, as the answer's ``source_tokens`` lists them."""

    sentences: list[TranslationJob] = field(default_factory=list)


def joined(job: SentencesJob, outputs: list[TranslationOutput], length_penalty: float) -> TranslationOutput:
    """One answer for the text from its sentences' answers (``length_penalty``: the exponent the
    sentences were scored with)."""
    limits = [sentence.max_length for sentence in job.sentences]
    best = _join([(out.tokens, out.score) for out in outputs], limits, length_penalty)
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
        # alternative i joins each sentence's i-th best (its last where a search closed fewer), in
        # that order: the first is the answer itself
        count = max(len(out.hypotheses or []) for out in outputs)
        hypotheses = [_join([(out.hypotheses or [])[min(i, len(out.hypotheses or []) - 1)] for out in outputs],
                            limits, length_penalty) for i in range(count)]
    return TranslationOutput(tokens=best[0], score=best[1], attention=attention, hypotheses=hypotheses)


def _join(parts: list[tuple[list[int], float]], limits: list[int], length_penalty: float) -> tuple[list[int], float]:
    """Tokens one after another, and the score of the whole: each part's log-probability comes back
    from its normalised score and the length it was normalised by, its subwords and its </s>,
    which a search closed at its ``max_length`` (in ``limits``) never emitted."""
    tokens = [token for part, _ in parts for token in part]
    lengths = [len(part) + (len(part) < limit) for (part, _), limit in zip(parts, limits, strict=True)]
    log_prob = sum(score * max(length, 1) ** length_penalty for (_, score), length in zip(parts, lengths, strict=True))
    return tokens, log_prob / max(sum(lengths), 1) ** length_penalty
