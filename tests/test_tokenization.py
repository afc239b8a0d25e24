from __future__ import annotations

import random
import re
import unicodedata
from pathlib import Path

import pytest

from service.tokenization import (
    EOS_ID,
    SubwordTokenizer,
    has_content,
    has_words,
    normalize_sentiment,
    normalize_translation,
)
from tests.conftest import COMMITTED_MODELS, DATA_DIR


@pytest.mark.parametrize(("raw", "expected"), [
    ("It's GREAT!!!", "it 's great ! ! !"),
    ("I can't believe it's not butter...", "i ca n't believe it 's not butter ..."),
    ("the film wo n't sit", "the film wo n't sit"),  # corpus style is a fixed point
    ("its heart -lrb- and its palate -rrb-", "its heart ( and its palate )"),
    ("“Smart,” she said.", "\" smart , \" she said ."),
    ("tab\there\x00 null\u200b", "tab here null"),
    ("Ｆｕｌｌｗｉｄｔｈ", "fullwidth"),
])
def test_sentiment_normalisation_maps_raw_text_to_corpus_style(raw: str, expected: str) -> None:
    assert normalize_sentiment(raw) == expected


def test_normalisation_is_idempotent() -> None:
    for text in ["It's GREAT!!! 😀", "don't -- ever (really)", "Ünïcödé «quotes»"]:
        once = normalize_sentiment(text)
        assert normalize_sentiment(once) == once
    assert normalize_translation("  A  man\n rides. ") == "A man rides."


# what renders as nothing is deleted (inside a word it must not part it), controls are spaced
_INVISIBLE = (r"[\u00ad\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f"
              r"\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
              r"\U000e0000-\U000e0fff]")


# what neither model saw: emoji and other pictographs, keycaps first
_PICTOGRAPH = (r"[0-9#*]\ufe0f?\u20e3|[\u00a9\u00ae\u203c\u2049\u20e3\u2122\u2139\u2190-\u21ff\u2300-\u23ff\u24c2"
               r"\u25a0-\u27bf\u2b00-\u2bff\u3030\u303d\u3297\u3299\U0001f000-\U0001faff]")


def _reference_clean(text: str) -> str:
    text = re.sub(_INVISIBLE, "", unicodedata.normalize("NFKC", text))
    text = re.sub(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def _reference_without_pictographs(text: str) -> str:
    """Taken out before NFKC, which spells some as letters ("™" as "TM")."""
    words = _reference_clean(re.sub(_PICTOGRAPH, " ", text))
    return words if has_content(words) else _reference_clean(text)


def _reference_normalize_sentiment(text: str) -> str:
    """normalize_sentiment as plain regular expressions, each step on the whole text: the
    definition the fast path in service/tokenization.py must match exactly."""
    text = _reference_without_pictographs(text).lower()
    text = text.translate(str.maketrans({"’": "'", "‘": "'", "`": "'", "´": "'", "“": '"', "”": '"', "„": '"'}))
    for markup, plain in (("-lrb-", "("), ("-rrb-", ")"), ("-lsb-", "["), ("-rsb-", "]"), ("-lcb-", "{"),
                          ("-rcb-", "}"), ("``", '"'), ("''", '"')):
        text = text.replace(markup, plain)
    text = re.sub(r"(^|\s)'(?!(?:s|re|ve|ll|d|m|t)\b)(?=\w)", r"\1' ", text)
    text = re.sub(r"(?<=[\w.!?,])'(?=\s|$)", " '", text)
    text = re.sub(r"(\w)(n't)\b", r"\1 \2", text)
    text = re.sub(r"(\w)('s|'re|'ve|'ll|'d|'m)\b", r"\1 \2", text)
    text = re.sub(r"(\.\.\.|--|[.,!?;:()\[\]{}\"/\\*&$#=+<>…|~^])", r" \1 ", text)
    return re.sub(r"\s+", " ", text).strip()


def _random_texts(count: int, seed: int = 0) -> list[str]:
    """Short texts over the characters each step of the normalisation treats specially."""
    rng = random.Random(seed)
    alphabet = [*"abcXYZ0 '`\"’‘´“”„.-,!?;:()[]{}/\\*&$#=+<>…|~^\t\n\r\x0b\x0c\x1c\x85\xa0\u2000\u200b",
                *"\u2028\u202f\u3000\ufeffé😀🔥👍🏽❤\u20e3\ufe0f™©→ﬁ①ǅİ\u200d\u202e\u2060\u00ad\U000e0041",
                "...", "--", "n't", "'s", "'re", "-lrb-", "-rcb-", "``", "''"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24))) for _ in range(count)]


def test_sentiment_normalisation_matches_its_regex_definition_exactly() -> None:
    texts = _random_texts(20_000)
    sst2 = DATA_DIR / "sst2" / "stsa.binary.dev"
    if sst2.exists():
        texts += [line.split(" ", 1)[1] for line in sst2.read_text().splitlines()]
    texts += ["It's GREAT!!! I didn't like the \"ending\" -- but (mostly) fine...", "'quoted' words'", "''"]
    assert [t for t in texts if normalize_sentiment(t) != _reference_normalize_sentiment(t)] == []
    for text in texts[:2000]:  # translation's normalisation is the first steps of the same definition
        assert normalize_translation(text) == _reference_without_pictographs(text)


@pytest.mark.parametrize(("model", "normalizer"), [("sentiment/1/sentiment.spm.model", "sentiment"),
                                                   ("translate-en-de/1/source.spm.model", "translation")])
def test_has_content_says_exactly_which_characters_leave_a_subword(model: str, normalizer: str) -> None:
    """The class the API refuses texts by (and the OpenAPI document's pattern) matches what the
    subword models keep, for every character of the Basic Multilingual Plane."""
    path = COMMITTED_MODELS / model
    if not path.exists():
        pytest.skip("no committed model")
    tok = SubwordTokenizer(path, normalizer)
    disagree = [hex(cp) for cp in range(0x10000) if not 0xD800 <= cp <= 0xDFFF
                and has_content(chr(cp)) != bool(tok.encode(chr(cp)))]
    assert disagree == []


MESSY = ["A man, in a RED shirt — rides a bike!!! 😀🚲", "Zwei Männer", "日本語のテキスト", "x" * 300,
         "ümlaut café naïve", "@user #hashtag http://example.com/a?b=c"]


@pytest.mark.parametrize("model", ["translate-en-de/1/source.spm.model", "translate-en-de/1/target.spm.model"])
def test_translation_tokenizer_round_trips_messy_text(model: str) -> None:
    path = COMMITTED_MODELS / model
    if not path.exists():
        pytest.skip("no committed translation model")
    tok = SubwordTokenizer(path, "translation")
    for text in MESSY:
        ids = tok.encode(text, add_eos=True)
        assert ids[-1] == EOS_ID
        # the emoji are not read (as its normaliser says); a dash the model cannot spell comes back plain
        assert tok.decode(ids) == normalize_translation(text).translate(str.maketrans({"—": "-"}))


def test_invisible_characters_are_dropped_and_leave_nothing() -> None:
    assert normalize_translation("co\u00adoperate") == "cooperate"  # soft hyphen
    assert normalize_translation("\u2764\ufe0f") == "\u2764"  # VS16 (the heart alone: nothing else to read)
    assert not has_content("\u3164\u115f\u180e\ufe0f\u034f\u17b4\uffa0")  # fillers, joiners, selectors
    assert has_content("\u2764\ufe0f")
    # zero-width spaces and joiners, bidi marks, the word joiner and the BOM inside words, as text
    # copied from web pages carries them: the words stay whole
    for mark in "\u200b\u200c\u200d\u200e\u2060\u202a\ufeff":
        assert normalize_translation(f"A wo{mark}man is rid{mark}ing a bicy{mark}cle.") == \
            "A woman is riding a bicycle."
    # beyond the BMP: tags (a subdivision flag is a black flag and tags) and musical formatting
    england = "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f"
    assert normalize_translation(england) == "\U0001f3f4"
    assert not has_content("\U000e0041\U000e007f") and not has_content("\U0001d173\ufff9")


def test_typographic_punctuation_becomes_plain_where_the_model_cannot_spell_it() -> None:
    source = COMMITTED_MODELS / "translate-en-de/1/source.spm.model"
    target = COMMITTED_MODELS / "translate-en-de/1/target.spm.model"
    if not source.exists():
        pytest.skip("no committed translation model")
    english = SubwordTokenizer(source, "translation")  # trained on plain punctuation only
    typed, plain = "The dog’s “ball” – red ‘yes’ — «no»", "The dog's \"ball\" - red 'yes' - \"no\""
    assert english.encode(typed) == english.encode(plain)
    german = SubwordTokenizer(target, "translation")  # its corpus quotes „so“ and has en dashes
    assert german.normalize("„Ein Hund“ – rot") == "„Ein Hund“ – rot"
    assert german.normalize("’x’") == "'x'"
    assert SubwordTokenizer(COMMITTED_MODELS / "sentiment/1/sentiment.spm.model", "sentiment").normalize(
        "great – really") == "great - really"


def test_sentiment_reads_no_emoji_but_keeps_information_from_unseen_scripts() -> None:
    """SST-2 has no emoji: as byte pieces the model never learned, " 🔥🔥🔥" after each dev sentence
    cost 18 points of accuracy. Out of what it reads (a text of emoji alone keeps them); letters of
    scripts it never saw stay bytes, not <unk>."""
    path = COMMITTED_MODELS / "sentiment/1/sentiment.spm.model"
    if not path.exists():
        pytest.skip("no committed sentiment model")
    tok = SubwordTokenizer(path, "sentiment")
    assert tok.encode("good 😀") == tok.encode("good 😢") == tok.encode("good 🔥🔥🔥") == tok.encode("good")
    assert tok.encode("good🔥movie") == tok.encode("good movie")  # spaced: the words stay apart
    assert tok.encode("😀") != tok.encode("😢") and tok.encode("😀")  # nothing else to score
    assert tok.encode("good ж") != tok.encode("good д")  # not both collapsed to <unk>
    assert tok.decode(tok.encode("It's GREAT!!! 😀")) == normalize_sentiment("It's GREAT!!! 😀") == "it 's great ! ! !"


def test_the_translator_reads_no_emoji_inside_a_sentence() -> None:
    """Multi30k has none: one after the middle word of every val source took BLEU from 38.9 to
    14.5-27.7 (`python -m loadtests.api_quality --emoji`). Spaced out of what the model reads, as
    for sentiment; a text of emoji alone keeps them."""
    path = COMMITTED_MODELS / "translate-en-de/1/source.spm.model"
    if not path.exists():
        pytest.skip("no committed translation model")
    tok = SubwordTokenizer(path, "translation")
    assert tok.encode("A dog 🐶 runs on the beach.") == tok.encode("A dog runs on the beach.")
    assert tok.encode("A dog🐶runs.") == tok.encode("A dog runs.")  # spaced: the words stay apart
    assert tok.encode("I ❤️ this city.") == tok.encode("I this city.")
    assert tok.encode("🐶") and tok.encode("🐶") != tok.encode("🐱")  # nothing else to translate
    # a keycap's digit was read as a number, and "™" (NFKC: "TM") as letters
    assert tok.encode("2\ufe0f\u20e3 A cat sleeps.") == tok.encode("A cat sleeps.")
    assert tok.encode("A cola\u2122 stand.") == tok.encode("A cola stand.")


@pytest.mark.parametrize("model", ["translate-en-de/1/source.spm.model", "translate-en-de/1/target.spm.model"])
def test_decode_joins_ordinary_pieces_exactly_as_sentencepiece_does(model: str) -> None:
    path = COMMITTED_MODELS / model
    if not path.exists():
        pytest.skip("no committed translation model")
    tok = SubwordTokenizer(path, "translation")
    sp = tok._sp  # the reference: sentencepiece's own decoder
    ordinary = [i for i, text in enumerate(tok.piece_texts) if text is not None]
    spaces = [i for i in ordinary if not tok.piece_texts[i].strip()]  # type: ignore[union-attr]
    assert spaces  # "▁" alone: the case that drops more than one leading space
    rng = random.Random(0)
    for n in range(20_000):
        pool = ordinary if n % 2 else ordinary[:40] + spaces * 20
        ids = [rng.choice(pool) for _ in range(rng.randint(1, 30))]
        assert tok.decode(ids) == sp.decode(ids), ids
    for text in MESSY:  # byte and unknown pieces: sentencepiece's decoder itself
        ids = tok.encode(text, add_eos=True)
        assert tok.decode(ids) == sp.decode([i for i in ids if i != EOS_ID])
    assert tok.decode([1, *tok.encode("Hund")]) == sp.decode([1, *tok.encode("Hund")])


def test_decode_is_sentencepiece_s_own_for_a_model_that_keeps_extra_spaces(tmp_path: Path) -> None:
    import sentencepiece as spm

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["a  dog   runs", " two  cats sit ", "the dog  and the cat", "sf fw  ab"] * 200))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "m"), vocab_size=24,
                                   remove_extra_whitespaces=False, pad_id=0, unk_id=1, bos_id=2, eos_id=3,
                                   minloglevel=2)
    tok = SubwordTokenizer(tmp_path / "m.model", "translation")
    assert not tok._joins_like_sentencepiece  # the join rule would drop or keep the wrong spaces
    ordinary = [i for i, text in enumerate(tok.piece_texts) if text is not None]
    rng = random.Random(1)
    for _ in range(2_000):
        ids = [rng.choice(ordinary) for _ in range(rng.randint(1, 12))]
        assert tok.decode(ids) == tok._sp.decode(ids), ids


@pytest.mark.parametrize(("text", "expected"), [
    ("A dog", True), ("42", True), ("\u00e9t\u00e9", True), ("\u72ac", True),
    ("\U0001f60a\U0001f44d", False), ("!!! ...", False), ("\u2122 \u00a9", False), ("_", False),
    ("1\ufe0f\u20e3", False), ("\u2139", False), ("\u2776", False),  # a keycap's digit, "ℹ", "❶": pictographs
    ("\u3164\U0001f60d", False), ("\uffa0\U0001f44e", False)])  # Hangul fillers: letters to \w, deleted as blanks
def test_has_words(text: str, expected: bool) -> None:
    assert has_words(text) is expected
