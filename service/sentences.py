"""A text of several sentences, translated sentence by sentence and joined again.

The translator was trained on Multi30k, one caption a line. Given a paragraph as one input it
translated part of it and dropped the rest without a word ("A woman is cooking. Two dogs play
in the snow." came back as "Eine Frau kocht im Schnee."). So a text is split into sentences,
each sentence is its own decoder job, batched with all others, and one text's outputs are joined
into one answer: the target subwords one after another (sentencepiece puts the word boundary
back between them), the source subwords likewise (each sentence with its own ``</s>``), the
attention block-diagonal (each sentence's rows over its own columns: rows still sum to 1), and
the score as for one sequence, ``sum(log p) / (its normalised lengths) ** alpha``. Where the source
put line breaks between two sentences (a list, one caption a line, paragraphs), the translation has
the same breaks between theirs (``Breaks``: the tokens stay as the model gave them, the text is
decoded sentence by sentence around the breaks). What a sentence begins or ends with that is not
the model's to read is taken off it and put back, as typed, around its translation (``edges``): a
list marker ("2. ", "- ", "• "; "2. A woman reads a book." came back as "Zwei Frauen lesen ein
Buch.", two women, and bullets as words or nothing), Markdown's quote and heading marks, emoji
before or after the words ("A dog runs on the beach. 🐶🌊" came back as "Ein Hund rennt am Strand
und ist dabei, das erfagt.", the emoji gone: Multi30k has none, and the model read their bytes as
words), and emphasis or brackets around the whole sentence.

The split follows the rules of Moses' split-sentences.perl, as MT pipelines have long used:
after ``. ! ?`` or an ellipsis (and closing quotes or brackets), before whitespace and a word
that starts with a capital or a digit (any letter in text typed all in lower case; list markers,
dashes and emoji before it do not count), except after a non-breaking prefix ("Mr.", "Dr.",
"St.", "e.g.", an initial "J.", "No." or "Jan." before a number, in any case) or a list marker
("1."), and after a word with a full stop inside ("U.S.", "p.m.") or "etc." only before a word
that usually opens a sentence ("The", "A", "He"); beyond Moses, where the space after the end was
left out ("runs.A cat"); and at a line break before a line that starts
like a sentence, and at a blank line (one caption a line, bulleted lists). It runs on the event loop, so it is one
linear pass that only cuts the text, never rewrites it: pysbd (its pieces rewritten, and
characters of some inputs lost: "A dog runs. A cat sits ??!" came back without its "!") took
~350 us for two short sentences and 350-550 ms for a 2,000-character text of short ones, and
Python's port of the Moses splitter (sentence-splitter) ~290 us and 25 ms. A one-sentence text
(nearly every caption) pays one regular-expression search.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

import numpy as np

from service.decoding import Breaks
from service.runners.translation import TranslationJob, TranslationOutput
from service.tokenization import KEYCAP, PICTOGRAPH_CHARS, has_content, has_words

# a sentence end (. ! ? ...) with its closing quotes or brackets then more text or an emoji, or a
# line break, or a sentence end typed without its space (below)
_MAYBE_SEVERAL = re.compile(r"[.!?\u2026][\"'\u201d\u2019)\]*_]*(?:\s+\S|" f"[{PICTOGRAPH_CHARS}])"
                            r"|\n\s*\S|[a-z]{2}[.!?][A-Z](?:[a-z]|\s)")
# a candidate end: its punctuation and closing quotes or brackets before whitespace, or a line break;
# or, without the space, one mark between a word of two lower-case letters or more and a capital
# that begins a word ("A dog runs.A cat sleeps." was read as one sentence, and the cat came back
# lost: "Ein Hund rennt über Holz."); not after an initial or an abbreviation ("U.S.A", "e.g.The"),
# nor inside a host name ("www.Google.com")
_CANDIDATE = re.compile(r"([.!?\u2026]+)[\"'\u201d\u2019)\]\u00bb*_]*(?=\s" f"|[{PICTOGRAPH_CHARS}])|\n"
                        r"|(?<=[a-z]{2})([.!?])(?=[A-Z](?:[a-z]|\s))(?![A-Za-z]+\.[A-Za-z])")
# Moses' English non-breaking prefixes (nonbreaking_prefix.en), compared in lower case: titles and
# abbreviations a full stop follows inside a sentence; the second set only before a number ("No. 5",
# "Jan. 5", "Fig. 3")
_PREFIXES = frozenset("""adj adm adv asst bart bldg brig bros capt cmdr col comdr con corp cpl dr drs ens gen gov hon hr
    hosp insp lt mm mr mrs ms maj messrs mlle mme msgr op ord pfc ph prof pvt rep reps res rev rt sen sens sfc sgt
    sr st supt surg v vs i.e e.g jr mt ave blvd""".split())
_BEFORE_NUMBERS = frozenset("""no nos art nr pp p fig figs vol vols ch sec eq jan feb mar apr jun jul aug sep sept
    oct nov dec""".split())
# after a word with a full stop inside ("p.m.", "U.S.") or "etc.", a sentence ends only before a
# word that usually opens one (Moses never ends it there: "It is 3:30 p.m. A man eats." came back
# as one garbled sentence)
_OPEN_ONLY = frozenset({"etc", "approx"})
_OPENERS = frozenset("""A An The One Two Three Four Five Six Several Some Many Most All Both Each Every He She It
    They We I You There This That These Those Then Now Here His Her Their Its Our My In On At""".split())
_LOOK = 12  # how far past a candidate end to look for the next word's first letter or digit
# a list marker at a sentence's start, with the spaces after it: a bullet or dash, a number of up to
# three digits with "." or ")", "(1)", "(a)", "a)", "[1]"; not a letter with a full stop ("A. Smith");
# and Markdown's quote and heading marks ("> ", "## "), which the model read as words ("number eight")
_MARKER = re.compile(r"(?:[-*+>\u2022\u2023\u25e6\u00b7\u2013\u2014]|#{1,6}|\(?\d{1,3}[.)]|\(\d{1,3}\)"
                     r"|\(?[a-zA-Z]\)|\[\d{1,3}\]|\[[ xX]\])[ \t\u00a0]+(?=\S)")  # "[ ]", "[x]": task lists
# what wraps a whole sentence, kept as typed around its translation: Markdown emphasis and brackets
# ("**A dog runs.** A cat sleeps." lost the cat; "(A dog runs.)" came back as "Ein (A (A (A-Strimer")
_WRAPS = (("***", "***"), ("**", "**"), ("__", "__"), ("*", "*"), ("_", "_"), ("(", ")"), ("[", "]"))
_WRAP_OPENINGS = frozenset(opening[0] for opening, _ in _WRAPS)
# a character of an emoji (with the joiners and variation selectors of emoji sequences), and the
# spaces between them: what ``edges`` scans over at a sentence's ends, one character at a time (a
# regular expression of runs of runs backtracked exponentially on a long run of emoji)
_EMOJI = re.compile(f"{KEYCAP}|[{PICTOGRAPH_CHARS}\u200d\ufe0e\ufe0f\U000e0020-\U000e007f]")
_KEYCAP_END = ("\u20e3", "\ufe0f\u20e3")  # what follows a keycap's digit, # or *
_SPACES = " \t\u00a0\n\r"
_MAX_WRAPS = 4  # "**(A dog runs.)**" is two; deeper nesting is read by the model


def sentences(text: str) -> list[str]:
    """The sentences of ``text``, stripped (one sentence too). Cut only, never rewritten:
    the parts hold every character of the text but the whitespace between them. A part that
    holds nothing the model reads (invisible characters) stays with its neighbour, and one of
    emoji alone with the sentence before it (its end, for ``edges``). Also a break:
    a line break before a line that starts like a sentence (one caption a line, a bulleted list)
    and a blank line; a list marker ("1.", "-", "•") stays with its sentence (``edges`` finds it)."""
    if _MAYBE_SEVERAL.search(text) is None:
        return [text.strip()]  # its edges are found from its words ("A dog runs. 😀\n" kept no emoji)
    any_case = not any(c.isupper() for c in text)  # typed in lower case: any letter may start one
    cuts: list[int] = []  # where each sentence after the first begins
    start = 0
    for match in _CANDIDATE.finditer(text):
        end = match.end()
        word = _next_word(text, end)
        mark = match.group(1) or match.group(2)
        if word is None:  # no word ahead: only a line break before a marked line ("- 👍"), kept as typed
            if mark is not None or _MARKER.match(text[end:end + _LOOK].lstrip()) is None:
                continue
        else:
            first = word[0]
            starts = first.isupper() or first.isdigit() or (any_case and first.isalpha())
            if mark is None:  # a line break: before a sentence's start or a marked line, or a blank line
                ahead = text[end:end + _LOOK]
                if not starts and "\n" not in ahead.split(word, 1)[0] and _MARKER.match(ahead.lstrip()) is None:
                    continue
            elif not starts or (mark == "." and not _ends_after(text, start, match.start(), word)):
                continue
        part = text[start:end]
        if has_content(part) and has_content(text[end:]):
            if not has_content(_EMOJI.sub("", part)):  # emoji alone: the end of the one before, or
                if not cuts:  # the first: the beginning of the next
                    continue
                cuts.pop()
            cuts.append(end)
            start = end
    if cuts and not has_content(_EMOJI.sub("", text[start:])):
        cuts.pop()
    if not cuts:
        return [text.strip()]
    return [text[a:b].strip() for a, b in itertools.pairwise([0, *cuts, len(text)])]


def edges(part: str) -> tuple[str, str]:
    """What ``part`` (a sentence) begins with and ends with that the translator does not read, as
    typed: list markers and emoji before its words (a marker with nothing after it is no marker),
    emoji after them, each with its spaces;
    ("", "") where nothing the model reads would be left between them."""
    return _edges_of(part, read_span(part))


def _edges_of(part: str, span: tuple[int, int]) -> tuple[str, str]:
    start, end = span
    if (start, end) == (0, len(part)):
        return "", ""
    return _as_lines(part[:start]), _as_lines(part[end:])


def read_span(part: str) -> tuple[int, int]:
    """Where what the translator reads of ``part`` begins and ends, within its ``edges`` as typed
    (the edges say a "\r\n" as "\n", so their lengths do not place it); (0, len(part)) where
    there are no edges."""
    start = 0
    while start < len(part):  # list markers and emoji, in any order ("📌 - A dog runs."), then spaces
        if (emoji := _EMOJI.match(part, start)) is not None:
            start = emoji.end()
        elif (marker := _MARKER.match(part, start)) is not None and has_content(part[marker.end():]):
            start = marker.end()
        else:
            break
        while start < len(part) and part[start] in _SPACES:
            start += 1
    end = len(part)
    while end > start and (_EMOJI.match(part, end - 1) is not None  # emoji, and the spaces before them
                           or (part[end - 1] in "0123456789#*" and part.startswith(_KEYCAP_END, end))):
        end -= 1
        while end > start and part[end - 1] in _SPACES:
            end -= 1
    for _ in range(_MAX_WRAPS):  # each level rescans what it wraps: 900 nested brackets took 34 ms of the loop
        if not (start < end and part[start] in _WRAP_OPENINGS and (wrap := _wrapped(part, start, end)) is not None):
            break
        start, end = start + len(wrap[0]), end - len(wrap[1])
    if not has_content(part[start:end]):  # nothing the model reads between them: no edges
        return 0, len(part)
    return start, end


def _wrapped(part: str, start: int, end: int) -> tuple[str, str] | None:
    """The emphasis or bracket pair (``_WRAPS``) that wraps ``part[start:end]`` whole, if one does:
    "(A dog) runs (fast)" and "*A* dog *runs*" open and close twice, and are not wrapped."""
    for opening, closing in _WRAPS:
        if not (part.startswith(opening, start) and part.endswith(closing, start, end)):
            continue
        inner = part[start + len(opening):end - len(closing)]
        if not has_content(inner) or inner[:1].isspace() or inner[-1:].isspace():
            continue
        if opening == closing:
            if opening not in inner:
                return opening, closing
            continue
        depth = 0  # a bracket: the first one closes at the last
        for char in inner:
            depth += (char == opening) - (char == closing)
            if depth < 0:
                break
        else:
            if depth == 0:
                return opening, closing
    return None


def _as_lines(edge: str) -> str:
    """Line breaks as the translation has them between sentences: "\n" (a "\r\n" or "\r" too)."""
    return edge.replace("\r\n", "\n").replace("\r", "\n") if "\r" in edge else edge


def separators(text: str, parts: list[str], edged: list[tuple[str, str]]) -> list[str]:
    """What the translation puts between each two sentences' translations: the first one's end
    (``edges``), the source's line breaks (``line_breaks``; a space where there are none) and the
    second one's beginning; only the line breaks (or nothing) where neither has an edge."""
    return [tail + (gap or " ") + head if tail or head else gap
            for gap, (_, tail), (head, _) in zip(line_breaks(text, parts), edged[:-1], edged[1:], strict=True)]


@dataclass
class Readable:
    """A text's sentences that hold words (``has_words``), each with its ``edges``, and what goes
    between their translations (``between``, as ``separators``). A sentence of no words ("- 👍"
    as a list item, "!!!") is not translated but kept as typed: it joins the end of the sentence
    before it, or the beginning of the first. ``kept``: the whole text as typed when no sentence
    holds a word (nothing is translated)."""

    parts: list[str]
    edged: list[tuple[str, str]]
    between: list[str]
    cores: list[str]  # what the model reads of each part: the part within its own edges
    numbers: list[int]  # each part's place among the text's sentences (from 0), as messages count them
    split: bool  # the text is more than one sentence (words or not)
    kept: str = ""


def translated_parts(text: str, parts: list[str]) -> Readable:
    """``parts`` (``sentences(text)``) as the translator reads them."""
    spans = [read_span(part) for part in parts]
    edged = [_edges_of(part, span) for part, span in zip(parts, spans, strict=True)]
    cores = [part[a:b] for part, (a, b) in zip(parts, spans, strict=True)]
    words = [k for k, part in enumerate(parts) if reads_words(part)]
    if len(words) == len(parts):  # nearly every text
        return Readable(parts, edged, separators(text, parts, edged), cores, words, len(parts) > 1)
    if not words:
        return Readable([], [], [], [], [], len(parts) > 1, _as_lines(text.strip()))
    gaps = [gap or " " for gap in line_breaks(text, parts)]
    # each sentence of no words, with the gap before it, goes into the tail of the one before;
    # those before the first with words, each with the gap after it, into that one's head
    tails = {k: edged[k][1] for k in words}
    for k, part in enumerate(parts):
        if k > words[0] and k not in tails:
            last = max(w for w in words if w < k)
            tails[last] += gaps[k - 1] + _as_lines(part)
    lead = "".join(_as_lines(parts[k]) + gaps[k] for k in range(words[0]))
    kept_edges = [(lead + edged[k][0] if k == words[0] else edged[k][0], tails[k]) for k in words]
    between = [tail + gaps[b - 1] + head if tail or head or gaps[b - 1] != " " else ""
               for (_, tail), (head, _), b in zip(kept_edges[:-1], kept_edges[1:], words[1:], strict=True)]
    return Readable([parts[k] for k in words], kept_edges, between, [cores[k] for k in words], words, True)


def reads_words(text: str) -> bool:
    """Whether a model has a word to read in ``text``: a letter or digit (no keycap or other
    pictograph, ``has_words``) after its list markers and emoji. "1. 👍", "- 1. 😍", "1️⃣", "ℹ️"
    hold none."""
    start = 0
    while start < len(text):
        found = _EMOJI.match(text, start) or _MARKER.match(text, start)
        if found is None:
            break
        start = found.end()
        while start < len(text) and text[start] in _SPACES:
            start += 1
    return has_words(text[start:])


def line_breaks(text: str, parts: list[str]) -> list[str]:
    """The line breaks of ``text`` between each two of its ``parts`` (``sentences(text)``), "" where
    only spaces separate them: what the translation keeps between the sentences' translations,
    as "\n" (a "\r\n" or a lone "\r" of the source is one too)."""
    breaks, at = [], 0
    for k, part in enumerate(parts):
        start = text.index(part, at)
        if k:
            gap = text[at:start]
            breaks.append("\n" * (gap.count("\n") + gap.count("\r") - gap.count("\r\n")))
        at = start + len(part)
    return breaks


def _next_word(text: str, at: int) -> str | None:
    """The word after ``at``, past whitespace and list markers, quotes, dashes or emoji; None if
    no letter or digit comes within reach."""
    i, stop = at, min(len(text), at + _LOOK)
    while i < stop and not text[i].isalnum():
        i += 1
    if i == stop:
        return None
    j = i
    while j < len(text) and j < i + 40 and (text[j].isalnum() or text[j] in "'-"):
        j += 1
    return text[i:j]


def _ends_after(text: str, start: int, dot: int, following: str) -> bool:
    """Whether the full stop at ``dot`` ends a sentence (begun at ``start``) before ``following``."""
    begin = dot  # the word before the full stop: a backward scan, not a search from 0
    while begin > start and not text[begin - 1].isspace():
        begin -= 1
    prefix = text[begin:dot].lstrip("\"'([\u201c\u2018")
    lower = prefix.lower()
    if not _EMOJI.sub("", text[start:begin]).strip() and (prefix.isdigit() or len(prefix) == 1):
        return False  # the part's first word, emoji before it aside: a list marker ("1.", "🐶 1.", "a.")
    if lower in _PREFIXES or (len(prefix) == 1 and prefix.isupper()):
        return False
    if lower in _BEFORE_NUMBERS and following[0].isdigit():
        return False
    if lower in _OPEN_ONLY or ("." in prefix and any(c.isalpha() for c in prefix)):
        return following in _OPENERS
    return True


@dataclass
class SentencesJob(TranslationJob):
    """One text of several sentences (or of one with edges): ``sentences`` are the jobs the
    engine decodes; ``src_ids`` is theirs joined, one attention column each, as the answer's
    ``source_tokens`` lists them; ``separators`` what goes between their translations
    (``separators``); ``lead`` the first sentence's beginning and ``tail`` the last one's end
    (``edges``)."""

    sentences: list[TranslationJob] = field(default_factory=list)
    separators: list[str] = field(default_factory=list)
    lead: str = ""
    tail: str = ""


def joined(job: SentencesJob, outputs: list[TranslationOutput], length_penalty: float) -> TranslationOutput:
    """One answer for the text from its sentences' answers (``length_penalty``: the exponent the
    sentences were scored with)."""
    limits = [sentence.max_length for sentence in job.sentences]
    best = _join([(out.tokens, out.score) for out in outputs], limits, length_penalty)
    breaks = _breaks([out.tokens for out in outputs], job.separators, job.lead)
    attention = np.zeros((0, 0), np.float32) if job.keep_attention and not outputs else None  # nothing translated
    if outputs and all(out.attention is not None for out in outputs):
        widths = [len(sentence.src_ids) for sentence in job.sentences]
        attention = np.zeros((len(best[0]), sum(widths)), np.float32)
        row = col = 0
        for out, width in zip(outputs, widths, strict=True):
            assert out.attention is not None
            attention[row:row + len(out.tokens), col:col + width] = out.attention[:, :width]
            row, col = row + len(out.tokens), col + width
    hypotheses = hypothesis_breaks = None
    if not outputs and job.num_hypotheses:  # nothing translated: one alternative, the text as typed
        hypotheses, hypothesis_breaks = [best], [breaks]
    elif outputs and all(out.hypotheses for out in outputs):
        # alternative i joins each sentence's i-th best (its last where a search closed fewer), in
        # that order: the first is the answer itself
        count = max(len(out.hypotheses or []) for out in outputs)
        chosen = [[(out.hypotheses or [])[min(i, len(out.hypotheses or []) - 1)] for out in outputs]
                  for i in range(count)]
        hypotheses = [_join(parts, limits, length_penalty) for parts in chosen]
        hypothesis_breaks = [_breaks([tokens for tokens, _ in parts], job.separators, job.lead) for parts in chosen]
    return TranslationOutput(tokens=best[0], score=best[1], attention=attention, hypotheses=hypotheses,
                             breaks=breaks, hypothesis_breaks=hypothesis_breaks, cut=any(out.cut for out in outputs),
                             tail=job.tail)


def _breaks(sentences: list[list[int]], separators: list[str], lead: str = "") -> Breaks:
    """Where each sentence after the first begins in the joined tokens, with what goes before it
    (line breaks, edges), for those with something; and ``lead`` at 0."""
    first = ((0, lead),) if lead else ()
    if not any(separators):
        return first
    starts = itertools.accumulate(len(tokens) for tokens in sentences[:-1])
    return first + tuple((start, separator) for start, separator in zip(starts, separators, strict=True) if separator)


def _join(parts: list[tuple[list[int], float]], limits: list[int], length_penalty: float) -> tuple[list[int], float]:
    """Tokens one after another, and the score of the whole: each part's log-probability comes back
    from its normalised score and the length it was normalised by, its subwords and its </s>,
    which a search closed at its ``max_length`` (in ``limits``) never emitted."""
    tokens = [token for part, _ in parts for token in part]
    lengths = [len(part) + (len(part) < limit) for (part, _), limit in zip(parts, limits, strict=True)]
    log_prob = sum(score * max(length, 1) ** length_penalty for (_, score), length in zip(parts, lengths, strict=True))
    return tokens, log_prob / max(sum(lengths), 1) ** length_penalty
