"""Text normalisation and subword tokenisation, shared unchanged by training and serving.

The sentiment corpus (SST-2) is lowercased and Penn-Treebank tokenised ("it 's", "do n't",
"-lrb-"). Users send raw text ("It's GREAT!!! 😀"). ``normalize_sentiment`` maps both styles to
the same form, so the subword model sees at serving time what it saw in training. The
translation corpus (Multi30k) is raw cased text, so it only gets Unicode NFKC normalisation.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import sentencepiece as spm

from service.truecasing import Truecaser
from service.word_memory import WordMemory

if TYPE_CHECKING:
    from service.model_card import TokenizerSpec

# Fixed special ids, set when the subword models are trained (export/tokenizers.py).
PAD_ID = 0
UNK_ID = 1
BOS_ID = 2
EOS_ID = 3

_PTB_MARKUP = {
    "-lrb-": "(",
    "-rrb-": ")",
    "-lsb-": "[",
    "-rsb-": "]",
    "-lcb-": "{",
    "-rcb-": "}",
    "``": '"',
    "''": '"',
}
_MARKUP = re.compile("|".join(re.escape(markup) for markup in _PTB_MARKUP))
_QUOTES = str.maketrans({"’": "'", "‘": "'", "`": "'", "´": "'", "“": '"', "”": '"', "„": '"'})
_NEGATION = re.compile(r"(\w)(n't)\b")
_CLITIC = re.compile(r"(\w)('s|'re|'ve|'ll|'d|'m)\b")
_CLITIC_STARTS = ("'s", "'r", "'v", "'l", "'d", "'m")
# an opening quote, but not the clitic of corpus-style "it 's" / "we 're"
_OPEN_QUOTE = re.compile(r"(^|\s)'(?!(?:s|re|ve|ll|d|m|t)\b)(?=\w)")
_CLOSE_QUOTE = re.compile(r"(?<=[\w.!?,])'(?=\s|$)")
# control characters and the line and paragraph separators: spaced, they may part words
_CONTROL_CHARS = "\x00-\x1f\x7f-\x9f\u2028\u2029"
_CONTROL = re.compile(f"[{_CONTROL_CHARS}]")
# Unicode's default-ignorable characters in the BMP, which render as nothing: zero-width spaces and
# joiners, bidi marks, the word joiner and invisible operators, the BOM, the soft hyphen, variation
# selectors (the one after a "❤"), Hangul and Mongolian fillers, interlinear annotation marks.
# A text of only these reached the models as byte pieces and came back translated as a sentence
# nobody wrote. Deleted, not spaced: they sit inside words ("wo\u200dman", as text copied from web
# pages and chat apps carries them) and after emoji; spaced, "wo man" came back as "Mann".
_IGNORABLE_CHARS = "\u00ad\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e" \
    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb"
# and beyond the BMP: musical formatting and shorthand format controls, variation selectors
# supplement, and tags (a subdivision flag such as England's is a black flag followed by tags).
# Not in the OpenAPI pattern's class below, which Python and ECMA-262 read alike only for BMP
# characters: a text of only these passes that pattern and is refused here.
_IGNORABLE_BEYOND_BMP = "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff"
_IGNORABLE = re.compile(f"[{_IGNORABLE_CHARS}{_IGNORABLE_BEYOND_BMP}]")
# Characters that leave no subword behind: _CONTROL's and _IGNORABLE's, the whitespace str.strip
# removes beyond them, and three the subword models' own normaliser drops (an Arabic letter mark,
# its "▁" space symbol and the replacement character). A text made only of these has nothing to
# classify or translate. A regular-expression class that Python and ECMA-262 (the OpenAPI
# document's patterns) read alike; tests/test_tokenization.py checks it against the models,
# character by character.
NOTHING_LEFT = _CONTROL_CHARS + _IGNORABLE_CHARS + " \xa0\u1680\u2000-\u200a\u202f\u205f\u3000" + \
    "\u061c\u2581\ufffd"
_SOMETHING_LEFT = re.compile(f"[^{NOTHING_LEFT}{_IGNORABLE_BEYOND_BMP}]")


# Emoji and other pictographs (arrows, shapes, dingbats, the emoji planes, the keycap mark). SST-2
# has none (nothing above U+00FF in its training text but accented letters), so the sentiment
# model read each as four byte pieces it never learned: " 🔥🔥🔥" after each SST-2 dev sentence
# took accuracy from 0.860 to 0.681, " 👍👍" to 0.815 (fp32). Spaced out of what it reads, as they
# may part words; a text of nothing else keeps them, having nothing else to be scored by. The
# translator's corpus, Multi30k, has none either (``normalize_translation``).
# Beyond those blocks, the emoji that stand alone in theirs (© ® ‼ ⁉ ™ ℹ Ⓜ 〰 〽 ㊗ ㊙; neither corpus
# has one), taken out before NFKC, which spells some as letters ("™" as "TM", "ℹ" as "i"); and a
# keycap ("2️⃣": a digit, # or *, then U+20E3), whose digit was read as a number ("2️⃣ A cat
# sleeps." came back as "Zwei Katzen schlafen.").
PICTOGRAPH_CHARS = ("\u00a9\u00ae\u203c\u2049\u20e3\u2122\u2139\u2190-\u21ff\u2300-\u23ff\u24c2\u25a0-\u27bf"
                    "\u2b00-\u2bff\u3030\u303d\u3297\u3299\U0001f000-\U0001faff")
KEYCAP = "[0-9#*]\ufe0f?\u20e3"
_PICTOGRAPHS = re.compile(f"{KEYCAP}|[{PICTOGRAPH_CHARS}]")


def has_content(text: str) -> bool:
    """Whether ``text`` keeps at least one subword once normalised and tokenised."""
    return _SOMETHING_LEFT.search(text) is not None


# a letter or digit, in any script, that the normaliser keeps (the Hangul fillers U+3164 and
# U+FFA0, which chat apps use as blanks, are letters to \w but deleted as invisible)
_WORD_CHAR = re.compile(f"[^\\W_{NOTHING_LEFT}{_IGNORABLE_BEYOND_BMP}]")


def has_words(text: str) -> bool:
    """Whether ``text`` holds a letter or digit that is no pictograph (a keycap's digit, "ℹ", "❶"
    are): what the models read. Emoji, symbols and punctuation alone ("😍😍", "- 👍", "!!!") were
    read as subwords the training text never held, and the models answered them with confidence:
    a sentiment label, an invented German sentence."""
    return _WORD_CHAR.search(text if text.isascii() else _PICTOGRAPHS.sub("", text)) is not None


# Punctuation split off as its own token. The corpus's two multi-character ones are held as a
# control character (none is left after ``_clean``) while the single characters are split off;
# the test's regex definition splits "...", "--" and these characters.
_ELLIPSIS, _DASHES = "\x00", "\x01"
_PUNCT = tuple(".,!?;:()[]{}\"/\\*&$#=+<>…|~^")


def _split_punctuation(text: str) -> str:
    """Each of ``_PUNCT`` spaced, then the held "..." and "--": a replace per character present
    (no replacement holds another's character, so the order does not matter) took a quarter of
    the time of one ``str.translate`` by a table of strings (0.9 against 3.6 us a SST-2 sentence)."""
    for char in _PUNCT:
        if char in text:
            text = text.replace(char, f" {char} ")
    if _ELLIPSIS in text:
        text = text.replace(_ELLIPSIS, " ... ")
    if _DASHES in text:
        text = text.replace(_DASHES, " -- ")
    return text


def _spaces(text: str) -> str:
    """Whitespace runs as one space, none at the ends: ``str.split`` splits on exactly the
    characters the ``\\s`` of a str pattern matches, in a fraction of the time."""
    return " ".join(text.split())


def _clean(text: str) -> str:
    """NFKC, control characters spaced and invisible ones dropped, whitespace collapsed."""
    if not text.isascii():  # NFKC leaves ASCII as it is, and it has no invisible characters
        text = _IGNORABLE.sub("", unicodedata.normalize("NFKC", text))
    if not text.isprintable():  # every character _CONTROL matches is unprintable
        text = _CONTROL.sub(" ", text)
    return _spaces(text)


def _clean_without_pictographs(text: str) -> str:
    """``_clean(text)`` with its pictographs spaced out, unless nothing else would be left."""
    if text.isascii() or _PICTOGRAPHS.search(text) is None:
        return _clean(text)
    words = _clean(_PICTOGRAPHS.sub(" ", text))
    return words if has_content(words) else _clean(text)


def normalize_sentiment(text: str) -> str:
    """Lowercase and split punctuation and clitics the way the SST-2 corpus does; emoji out.

    This runs on the event loop for every request, so each step is the cheapest that gives the
    same output (tests/test_tokenization.py checks it against the plain regular expressions on
    the corpus and on random text): the corpus markup replaced in one pass, the apostrophe
    rules only on texts with an apostrophe, the punctuation split off by ``str.translate``.
    """
    text = _clean_without_pictographs(text)
    text = text.lower()
    text = text.replace("`", "'") if text.isascii() else text.translate(_QUOTES)
    if "-" in text or "'" in text:  # every corpus markup has one of them (its `` became '' above)
        text = _MARKUP.sub(lambda m: _PTB_MARKUP[m.group()], text)
    if "'" in text:  # each rule only where the text has what it needs (whitespace is " " by now)
        if text.startswith("'") or " '" in text:
            text = _OPEN_QUOTE.sub(r"\1' ", text)
        if text.endswith("'") or "' " in text:
            text = _CLOSE_QUOTE.sub(" '", text)
        if "n't" in text:
            text = _NEGATION.sub(r"\1 \2", text)
        if any(clitic in text for clitic in _CLITIC_STARTS):
            text = _CLITIC.sub(r"\1 \2", text)
    text = text.replace("...", _ELLIPSIS).replace("--", _DASHES)  # left to right, as the regex matched
    return _spaces(_split_punctuation(text))


def normalize_translation(text: str) -> str:
    """Raw, cased text: NFKC, whitespace and pictographs out; the subword model does the rest.
    Emoji at a sentence's edges are kept as typed around its translation (service/sentences.py
    ``edges``); those inside its words are not read (Multi30k has none: one after the middle word
    of every val source took BLEU from 38.9 to 14.5-27.7, `python -m loadtests.api_quality
    --emoji`)."""
    return _clean_without_pictographs(text)


NORMALIZERS = {"sentiment": normalize_sentiment, "translation": normalize_translation}

# Typographic punctuation that phones and word processors put in, and its plain twin. A subword
# model trained on plainly punctuated text (Multi30k's English, SST-2) can spell the typographic
# character only as UTF-8 byte pieces, which its network has rarely seen: one "’" in "The dog’s
# ball is red." turned the translation into nonsense. ``SubwordTokenizer`` replaces each only
# where its model spells it as bytes: the German target model knows „ “ and –, its corpus's own.
# (NFKC, earlier, already turns "…", "″" and full-width forms into plain ones.)
TYPOGRAPHIC = {"‘": "'", "’": "'", "‚": "'", "‛": "'", "´": "'", "′": "'",
               "“": '"', "”": '"', "„": '"', "‟": '"', "«": '"', "»": '"',
               "‐": "-", "‒": "-", "–": "-", "—": "-", "―": "-", "−": "-"}


class SubwordTokenizer:
    """A sentencepiece model plus the normaliser it was trained with, and optionally a truecaser
    that recases text typed in one case throughout (service/truecasing.py) after normalisation.

    ``encode`` never fails on valid Unicode: characters the model has not seen fall back to
    UTF-8 byte pieces (the models are trained with byte_fallback), so rare scripts keep their
    information instead of collapsing to <unk> (emoji are taken out before, unless a text has
    nothing else: ``_clean_without_pictographs``).
    """

    def __init__(self, model_file: str | Path, normalizer: str, truecaser: Truecaser | None = None) -> None:
        if normalizer not in NORMALIZERS:
            raise ValueError(f"unknown normalizer {normalizer!r}; expected one of {sorted(NORMALIZERS)}")
        self.model_file = Path(model_file)
        self.normalizer_name = normalizer
        self._normalize = NORMALIZERS[normalizer]
        self.truecaser = truecaser
        self._sp = spm.SentencePieceProcessor(model_file=str(self.model_file))
        self._plain = str.maketrans({char: plain for char, plain in TYPOGRAPHIC.items()
                                     if self._spells_as_bytes(char)})
        # texts tokenised by their words' remembered ids (service/word_memory.py); not with a
        # truecaser, which reads a word's case by its place in the sentence
        self.word_memory = WordMemory(self._sp, self.normalize) if truecaser is None else None

    @classmethod
    def from_spec(cls, model_dir: Path, spec: TokenizerSpec) -> SubwordTokenizer:
        """The tokenizer a model card describes, with its files read from ``model_dir``."""
        truecaser = Truecaser.load(model_dir / spec.truecaser) if spec.truecaser else None
        return cls(model_dir / spec.file, spec.normalizer, truecaser)

    @property
    def vocab_size(self) -> int:
        return int(self._sp.get_piece_size())

    def _spells_as_bytes(self, char: str) -> bool:
        """Whether the model has no piece for ``char`` (it becomes byte pieces, or unknown)."""
        sp = self._sp
        return any(sp.is_byte(i) or sp.is_unknown(i) for i in sp.encode(char))

    def normalize(self, text: str) -> str:
        text = self._normalize(text)
        if self._plain and not text.isascii():  # typographic punctuation the model cannot spell
            text = text.translate(self._plain)
        return self.truecaser(text) if self.truecaser is not None else text

    def encode(self, text: str, add_eos: bool = False) -> list[int]:
        memory = self.word_memory
        ids = memory.encode(text) if memory is not None else None
        if ids is None:
            ids = self.encode_whole(text)
        if add_eos:
            ids.append(EOS_ID)
        return ids

    def encode_whole(self, text: str) -> list[int]:
        """The text normalised and encoded by sentencepiece in one piece, not word by word."""
        ids: list[int] = self._sp.encode(self.normalize(text), out_type=int)
        return ids

    def pieces(self, ids: Sequence[int]) -> list[str]:
        table = self._piece_table
        return [table[int(i)] for i in ids]

    @functools.cached_property
    def _piece_table(self) -> list[str]:
        return [self._sp.id_to_piece(i) for i in range(self.vocab_size)]

    @functools.cached_property
    def piece_texts(self) -> list[str | None]:
        """Each id's text as decoding adds it after other text (its "▁" a space); None for
        byte, control, unknown and unused pieces, whose text depends on their neighbours or is
        not their piece. Lets a stream send a token's text without decoding (service/streaming.py)."""
        sp = self._sp
        return [None if sp.is_byte(i) or sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i)
                else piece.replace("▁", " ") for i, piece in enumerate(self._piece_table)]

    def prepare_decoding(self) -> None:
        """Build the decoding tables now (~40 ms), for a tokenizer that will decode: built by the
        first translation instead, they held the event loop that long while a burst waited
        (loadtests/reliability.py). A tokenizer that only encodes never needs them."""
        _ = self._joins_like_sentencepiece

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids`` (padding, BOS and EOS left out).

        Ordinary pieces are joined here, as sentencepiece's decoder joins them (their text, the
        leading spaces dropped: checked against it on random sequences in the tests); only byte
        and unknown pieces go to sentencepiece. Its call releases the GIL, and on the event loop
        each release lets a busy decode thread take the GIL first: the loop then waits for it
        (py-spy put a tenth of the loop's time at 64 streams in these calls)."""
        keep = [int(i) for i in ids if int(i) not in (PAD_ID, BOS_ID, EOS_ID)]
        if self._joins_like_sentencepiece:
            try:
                return self._join(keep)
            except TypeError:  # a None: a byte, unknown or unused piece
                pass
        return str(self._sp.decode(keep))

    def _join(self, ids: Sequence[int]) -> str:
        texts = self.piece_texts
        return "".join([texts[i] for i in ids]).lstrip(" ")  # type: ignore[misc]

    @functools.cached_property
    def _joins_like_sentencepiece(self) -> bool:
        """Whether ``_join`` decodes as sentencepiece does: it does for models trained with its
        default ``remove_extra_whitespaces`` (as export/ trains them), not for others, whose
        decoder keeps spaces differently. Checked once, on the sequences where they could differ
        (space pieces before, between and after words)."""
        texts = self.piece_texts
        words = [i for i, text in enumerate(texts) if text and text.strip()][:20]
        spaces = [i for i, text in enumerate(texts) if text is not None and not text.strip()][:3]
        probes = [[w] for w in words] + [[s, w] for s in spaces for w in words] + \
            [[s, s, w, s, s, w, s] for s in spaces for w in words]
        return all(self._join(probe) == self._sp.decode(probe) for probe in probes)
