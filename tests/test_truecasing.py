from __future__ import annotations

from pathlib import Path

import pytest

from export.data import read_multi30k
from export.text_variants import lower, title, upper
from service.model_card import load_model_card
from service.tokenization import SubwordTokenizer
from service.truecasing import Truecaser, casing_of
from tests.conftest import COMMITTED_MODELS, DATA_DIR

TRAIN = [
    "A man in a red shirt is climbing a rock.",
    "Two dogs play in the snow near New York.",
    "A woman and a man are talking; I think they're in Paris.",
    "2 men stand in line at a restaurant.",
    "The man in the T-shirt plays the guitar.",
    "A man wearing a hat walks to the store in New York.",
]
TRANSLATOR = COMMITTED_MODELS / "translate-en-de" / "1"


@pytest.fixture(scope="module")
def truecaser() -> Truecaser:
    return Truecaser.learn(TRAIN)


@pytest.mark.parametrize(("text", "casing"), [
    ("A MAN IN A RED SHIRT IS CLIMBING A ROCK!!", "upper"),
    ("a man in a red shirt", "lower"),
    ("A Man In A Red Shirt.", "title"),
    ("A man in a RED shirt.", None),
    ("Two dogs play in New York.", None),
    ("123 !!", None),
    ("Hello", None),  # one word: ordinary
])
def test_casing_of(text: str, casing: str | None) -> None:
    assert casing_of(text) == casing


def test_learns_each_words_own_casing_not_its_sentence_initial_capital(truecaser: Truecaser) -> None:
    assert truecaser.forms["a"] == "a" and truecaser.forms["man"] == "man"
    assert truecaser.forms["new"] == "New" and truecaser.forms["york"] == "York"
    assert truecaser.forms["i"] == "I"
    assert truecaser.forms["two"] == "two"  # seen only starting a sentence: lower case
    assert truecaser.forms["t"] == "T"


@pytest.mark.parametrize("typed", [upper, lower, title])
def test_degenerate_casing_is_recased_to_the_normal_form(truecaser: Truecaser, typed: object) -> None:
    for sentence in ["A man in a red shirt is climbing a rock.", "Two dogs play in the snow near New York."]:
        assert truecaser(typed(sentence)) == sentence  # type: ignore[operator]


def test_recasing_details(truecaser: Truecaser) -> None:
    assert truecaser("A MAN IN A RED SHIRT IS CLIMBING A ROCK!!") == "A man in a red shirt is climbing a rock!!"
    assert truecaser("2 MEN STAND IN LINE. THEY'RE IN PARIS") == "2 men stand in line. They're in Paris"
    assert truecaser("a man in a t-shirt") == "A man in a T-shirt"
    # unknown words: lower case in all-caps text, as typed otherwise (a capitalised one may be a name)
    assert truecaser("A MAN NAMED ZORBO") == "A man named zorbo"
    assert truecaser("A Man In Paris And Zorbo") == "A man in Paris and Zorbo"


@pytest.mark.parametrize("text", ["A man in a Red shirt.", "A dog. a cat", "NASA launches a rocket.", "", "!!!",
                                  "Two dogs play in New York.", "A man in a T-shirt."])
def test_ordinary_mixed_casing_passes_through_unchanged(truecaser: Truecaser, text: str) -> None:
    assert truecaser(text) is text


@pytest.mark.parametrize(("text", "expected"), [
    ("A man in a RED shirt.", "A man in a red shirt."),  # a word in capitals for emphasis
    ("A MAN in a red shirt.", "A man in a red shirt."),  # starting the sentence: capitalised
    ("Two DOGS play in the snow near NEW YORK.", "Two dogs play in the snow near New York."),
    ("A man in a red SHIRT from the USA and NASA.", "A man in a red shirt from the USA and NASA."),  # unknown
    ("A MAN is in a red shirt, a man!", "A man is in a red shirt, a man!"),
])
def test_a_word_in_capitals_within_mixed_casing_is_recased(truecaser: Truecaser, text: str, expected: str) -> None:
    """"A DOG runs on the BEACH." came back as "Ein Hund rennt auf den QASAREST"." Only words of
    three or more letters whose usual form is not capitals: "NASA" (unknown) and "GI" stay."""
    assert truecaser(text) == expected


def test_saves_and_loads_the_same_table(truecaser: Truecaser, tmp_path: Path) -> None:
    path = tmp_path / "truecase.txt"
    truecaser.save(path)
    assert Truecaser.load(path).forms == truecaser.forms


def test_the_committed_translator_ships_its_truecaser() -> None:
    card = load_model_card(TRANSLATOR / "model.json")
    assert card.tokenizers["source"].truecaser is not None
    assert len(Truecaser.load(TRANSLATOR / card.tokenizers["source"].truecaser)) > 5000


def test_all_caps_val_sentences_take_at_most_1_2x_the_subwords_of_their_normal_form() -> None:
    if not (DATA_DIR / "multi30k").is_dir():
        pytest.skip(f"no data sets under {DATA_DIR}")
    card = load_model_card(TRANSLATOR / "model.json")
    tok = SubwordTokenizer.from_spec(TRANSLATOR, card.tokenizers["source"])
    plain = SubwordTokenizer(TRANSLATOR / card.tokenizers["source"].file, "translation")
    for sentence in read_multi30k(DATA_DIR, "val", "en"):
        normal = len(plain.encode(sentence))
        assert len(tok.encode(upper(sentence))) <= 1.2 * normal, sentence
        if casing_of(sentence) is None:  # typed normally: exactly the subwords without the truecaser
            assert tok.encode(sentence) == plain.encode(sentence)
