"""service/sentences.py: splitting a text into sentences, and joining their translations."""

from __future__ import annotations

import numpy as np
import pytest

from service.runners.translation import TranslationJob, TranslationOutput
from service.sentences import (
    SentencesJob,
    edges,
    joined,
    line_breaks,
    reads_words,
    sentences,
    separators,
    translated_parts,
)


@pytest.mark.parametrize(("text", "expected"), [
    ("A dog runs on the beach.", ["A dog runs on the beach."]),
    ("A woman is cooking. Two dogs play in the snow.", ["A woman is cooking.", "Two dogs play in the snow."]),
    ("Mr. Smith walks in St. Louis. It is 3.5 km away!", ["Mr. Smith walks in St. Louis.", "It is 3.5 km away!"]),
    ('"Look!" said the boy. The girl laughed.', ['"Look!" said the boy.', "The girl laughed."]),
    ("A man waves...  Then he leaves?! Yes", ["A man waves...", "Then he leaves?!", "Yes"]),
    ("A DOG RUNS. A CAT SLEEPS.", ["A DOG RUNS.", "A CAT SLEEPS."]),
    ("a dog runs. a cat sleeps", ["a dog runs.", "a cat sleeps"]),
    ("Two men near a U.S. flag", ["Two men near a U.S. flag"]),  # no sentence end followed by text
    ("J. Smith wins. No. 5 loses.", ["J. Smith wins.", "No. 5 loses."]),  # an initial; "No." before a number
    # after a word with a full stop inside, only before a word that opens sentences
    ("A man in the U.S. The end.", ["A man in the U.S.", "The end."]),
    ("The U.S. Army marches.", ["The U.S. Army marches."]),
    ("It is 3:30 p.m. A man eats.", ["It is 3:30 p.m.", "A man eats."]),
    # one caption a line, lists, dashes and emoji between sentences (the second one was dropped)
    ("Two dogs play in the snow\nA woman is cooking", ["Two dogs play in the snow", "A woman is cooking"]),
    ("Two dogs play\n\na woman cooks", ["Two dogs play", "a woman cooks"]),  # a blank line, whatever follows
    ("A man and a woman\nin a red dress walk.", ["A man and a woman\nin a red dress walk."]),  # a wrapped line
    ("- A dog runs.\n- A cat sleeps.", ["- A dog runs.", "- A cat sleeps."]),
    ("1. A dog runs. 2. A cat sleeps.", ["1. A dog runs.", "2. A cat sleeps."]),  # a list marker stays
    ("A dog runs. \U0001f415 A cat sleeps.", ["A dog runs.", "\U0001f415 A cat sleeps."]),
    # non-breaking prefixes in any case, and before a number
    ("a man cooks. mr. smith rides a bike.", ["a man cooks.", "mr. smith rides a bike."]),
    ("PROF. KIM TALKS. THE END.", ["PROF. KIM TALKS.", "THE END."]),
    ("Children play (see Fig. 3). A man walks.", ["Children play (see Fig. 3).", "A man walks."]),
    ("A dog runs. A cat sits ??!", ["A dog runs.", "A cat sits ??!"]),  # pysbd dropped the "!"
    ("A dog runs. \u200b", ["A dog runs. \u200b"]),  # nothing the model reads: no sentence of its own
    ("A dog.\n\nTwo cats!\tA bird?", ["A dog.", "Two cats!", "A bird?"]),
    # the space after a sentence's end left out, as typed in a hurry (the second sentence was lost)
    ("A dog runs.A cat sleeps.", ["A dog runs.", "A cat sleeps."]),
    ("He runs!I walk.", ["He runs!", "I walk."]),
    ("Dogs, cats, etc.The end.", ["Dogs, cats, etc.", "The end."]),
    # but not after an initial or an abbreviation, inside a host name, or before a lower-case letter
    ("It is in the U.S.A today.", ["It is in the U.S.A today."]),
    ("e.g.The dog.", ["e.g.The dog."]),
    ("Mr.Smith walks.", ["Mr.Smith walks."]),
    ("See www.Google.com now.", ["See www.Google.com now."]),
    ("A dog runs.a cat sleeps.", ["A dog runs.a cat sleeps."]),
    # an emoji typed right after a sentence's end: the next sentence was read into it, and lost
    ("Thanks for the photo!\U0001f60a A dog runs.", ["Thanks for the photo!", "\U0001f60a A dog runs."]),
    ("A dog runs.\U0001f436A cat sleeps.", ["A dog runs.", "\U0001f436A cat sleeps."]),
    ("I love it!\U0001f60d", ["I love it!\U0001f60d"]),
    # one sentence, stripped as several are: its edges are found from its words
    ("A dog runs. \U0001f600\n", ["A dog runs. \U0001f600"]), (" 1. A dog runs.", ["1. A dog runs."]),
    ("\u2705 1. A dog runs.\n\u274c 2. A cat sleeps.", ["\u2705 1. A dog runs.", "\u274c 2. A cat sleeps."]),
    # Markdown and lettered lists: the second sentence was read into the first, and lost
    ("**A dog runs.** A cat sleeps.", ["**A dog runs.**", "A cat sleeps."]),
    ("a) A dog runs.\nb) A cat sleeps.", ["a) A dog runs.", "b) A cat sleeps."]),
    ("- [ ] A dog runs.\n- [x] A cat sleeps.", ["- [ ] A dog runs.", "- [x] A cat sleeps."]),
    ("> A dog runs.\n> a cat sleeps.", ["> A dog runs.", "> a cat sleeps."]),
])
def test_a_text_splits_into_its_sentences(text: str, expected: list[str]) -> None:
    assert sentences(text) == expected


def _job(src: list[int]) -> TranslationJob:
    return TranslationJob(src, beam_size=2, max_length=10)


def test_joined_answers_read_as_one_sequence() -> None:
    parts = [_job([4, 5, 2]), _job([6, 2])]  # source subwords, each sentence with its </s> (2)
    job = SentencesJob([4, 5, 2, 6, 2], 2, 10, sentences=parts)
    first = TranslationOutput([7, 8], score=-2.0 / 3, attention=np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]]),
                              hypotheses=[([7, 8], -2.0 / 3), ([9], -1.0)])
    second = TranslationOutput([10], score=-0.5, attention=np.array([[0.25, 0.75]]),
                               hypotheses=[([10], -0.5)])
    out = joined(job, [first, second], length_penalty=1.0)
    assert out.tokens == [7, 8, 10]
    assert out.score == pytest.approx((-2.0 - 1.0) / (3 + 2))  # sum(log p) / (subwords + one </s> each)
    assert out.attention is not None and out.attention.shape == (3, 5)
    np.testing.assert_allclose(out.attention.sum(axis=1), 1.0)  # block-diagonal: each row still sums to 1
    np.testing.assert_allclose(out.attention[2], [0, 0, 0, 0.25, 0.75])
    # the i-th alternative joins each sentence's i-th best, the last where a search closed fewer
    assert out.hypotheses is not None and [tokens for tokens, _ in out.hypotheses] == [[7, 8, 10], [9, 10]]
    assert out.hypotheses[1][1] == pytest.approx((-2.0 - 1.0) / (1 + 1 + 2))
    # exponent 0: each score is its total log-probability, and so is the whole's
    totals = [TranslationOutput([7, 8], -2.0, None), TranslationOutput([10], -1.0, None)]
    assert joined(job, totals, length_penalty=0.0).score == pytest.approx(-3.0)


def test_a_split_only_cuts_the_text() -> None:
    """Every character but the whitespace between parts is kept, in order, whatever the text."""
    import random

    rng = random.Random(0)
    alphabet = [*"aB. !?\"')(\u200b\u00a0\n\u2026xY1", "Mr.", "U.S.", "No. 5"]
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        parts = sentences(text)
        assert "".join("".join(part.split()) for part in parts) == "".join(text.split()), (text, parts)
        assert len(parts) == 1 or all(part.strip() == part and part for part in parts)


def test_line_breaks_between_sentences_are_kept_for_the_translation() -> None:
    text = "- A dog runs.\r\n- A cat sleeps.\n\n  Two men talk. A woman cooks."
    parts = sentences(text)
    assert parts == ["- A dog runs.", "- A cat sleeps.", "Two men talk.", "A woman cooks."]
    assert line_breaks(text, parts) == ["\n", "\n\n", ""]
    assert line_breaks("A dog runs.\rA cat sleeps.", ["A dog runs.", "A cat sleeps."]) == ["\n"]  # old Mac files
    job = SentencesJob([4, 2, 5, 2, 6, 2], 2, 10, sentences=[_job([4, 2]), _job([5, 2]), _job([6, 2])],
                       separators=["\n", ""])
    outs = [TranslationOutput([7, 8], -1.0, None, hypotheses=[([7, 8], -1.0), ([9], -2.0)]),
            TranslationOutput([10], -1.0, None, hypotheses=[([10], -1.0)]),
            TranslationOutput([11], -1.0, None, hypotheses=[([11], -1.0)])]
    out = joined(job, outs, length_penalty=1.0)
    assert out.tokens == [7, 8, 10, 11] and out.breaks == ((2, "\n"),)  # only where the source broke the line
    assert out.hypothesis_breaks == [((2, "\n"),), ((1, "\n"),)]

    def decode(ids: object) -> str:
        return " ".join(map(str, ids))  # type: ignore[call-overload]

    assert out.text(decode) == "7 8\n10 11"
    assert out.hypothesis_texts(decode) == ["7 8\n10 11", "9\n10 11"]


@pytest.mark.parametrize(("part", "marker"), [
    ("1. A dog runs.", "1. "), ("12) A dog runs.", "12) "), ("(3) A dog.", "(3) "), ("(a) A dog.", "(a) "),
    ("b) A dog.", "b) "), ("[4] A dog.", "[4] "), ("- A dog.", "- "), ("* A dog.", "* "),
    ("\u2022\tA dog.", "\u2022\t"), ("\u2013 A dog.", "\u2013 "),
    # not markers: a number that is a word, a year, an initial, a signed number, a marker with nothing after it
    ("2 dogs run.", ""), ("2019. A dog.", ""), ("A. Smith walks.", ""), ("-5 degrees.", ""), ("1.5 l of milk.", ""),
    ("5.", ""), ("- ", ""), ("A dog runs.", ""),
])
def test_a_list_marker_is_found_at_a_sentences_start(part: str, marker: str) -> None:
    assert edges(part)[0] == marker


def test_edges_go_between_the_translations_the_first_leads_and_the_last_ends() -> None:
    """Taken off before the model ("2. A woman reads" came back as "Zwei Frauen lesen": two women;
    emoji as words, or gone) and put back as typed, around the line breaks, or with a space where
    the source had none."""
    text = "1. A dog runs.\n2. A cat sleeps. 3. A man sings.\n\nA woman cooks."
    parts = sentences(text)
    edged = [edges(part) for part in parts]
    assert [head for head, _ in edged] == ["1. ", "2. ", "3. ", ""]
    assert separators(text, parts, edged) == ["\n2. ", " 3. ", "\n\n"]
    text = "\U0001f436 A dog runs. \U0001f30a\n\u2022 A cat sleeps \U0001f60d\u26bd"  # 🐶 ... 🌊 / • ... 😍⚽
    parts = sentences(text)
    edged = [edges(part) for part in parts]
    assert edged == [("\U0001f436 ", " \U0001f30a"), ("\u2022 ", " \U0001f60d\u26bd")]
    assert separators(text, parts, edged) == [" \U0001f30a\n\u2022 "]
    job = SentencesJob([4, 2, 5, 2], 2, 10, sentences=[_job([4, 2]), _job([5, 2])], separators=["\n- "], lead="- ",
                       tail=" !")
    out = joined(job, [TranslationOutput([7, 8], -1.0, None), TranslationOutput([9], -1.0, None)], length_penalty=1.0)
    assert out.breaks == ((0, "- "), (2, "\n- "))
    assert out.text(lambda ids: " ".join(map(str, ids))) == "- 7 8\n- 9 !"


@pytest.mark.parametrize(("part", "edged"), [
    ("\U0001f436 A dog runs.", ("\U0001f436 ", "")),
    ("A dog runs. \U0001f436\U0001f30a", ("", " \U0001f436\U0001f30a")),
    ("\u2764\ufe0f Love it \u2764\ufe0f", ("\u2764\ufe0f ", " \u2764\ufe0f")),  # with its variation selector
    ("\U0001f468\u200d\U0001f469\u200d\U0001f467 A family.", ("\U0001f468\u200d\U0001f469\u200d\U0001f467 ", "")),
    ("A cat.\r\n\U0001f431", ("", "\n\U0001f431")),  # a line break inside an edge, as between sentences
    # nothing the model reads between them: all of it to the model, as before
    ("\U0001f436", ("", "")), ("\u2022 \U0001f436", ("", "")),
    ("A \U0001f436 runs.", ("", "")),  # inside the words: left to the normaliser, which drops them
    # a keycap ("2" read as a number: two cats), the text-style selector, a subdivision flag's tags
    ("2\ufe0f\u20e3 A cat sleeps.", ("2\ufe0f\u20e3 ", "")), ("A cat sleeps 0\ufe0f\u20e3", ("", " 0\ufe0f\u20e3")),
    ("A dog runs \u2764\ufe0e", ("", " \u2764\ufe0e")),
    ("A flag \U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",
     ("", " \U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f")),
    ("A dog runs \u203c\ufe0f", ("", " \u203c\ufe0f")), ("\u00a9 A man reads.", ("\u00a9 ", "")),
    # a marker after emoji ("1." was translated as a sentence of its own: "🐶 Ein. Ein Hund rennt.")
    ("\U0001f436 1. A dog runs.", ("\U0001f436 1. ", "")), ("\U0001f4cc - A dog runs.", ("\U0001f4cc - ", "")),
    # Markdown's marks, read as words ("## A dog" came back as "Ein Hund mit der Nummer acht.")
    ("## A dog", ("## ", "")), ("> A dog runs.", ("> ", "")), ("- [x] A dog runs.", ("- [x] ", "")),
    # a pair that wraps the whole sentence ("(A dog runs.)" came back as "Ein (A (A (A-Strimer rennt.")
    ("**A dog runs.**", ("**", "**")), ("(A dog runs.)", ("(", ")")), ("_A dog runs._", ("_", "_")),
    ("(A dog) runs (fast).", ("", "")), ("*A* dog *runs*.", ("", "")), ("( A dog )", ("", "")),
])
def test_the_edges_of_a_sentence(part: str, edged: tuple[str, str]) -> None:
    assert edges(part) == edged


def test_emoji_alone_stay_with_a_sentence() -> None:
    assert sentences("A dog runs. \U0001f436\nA cat sleeps.\n\U0001f431") == ["A dog runs. \U0001f436",
                                                                          "A cat sleeps.\n\U0001f431"]
    assert sentences("\U0001f436\nA dog runs. A cat sleeps.") == ["\U0001f436\nA dog runs.", "A cat sleeps."]
    long = "A " + "\U0001f436" * 1000 + " dog runs."  # scanned one character at a time: no backtracking
    assert edges(long) == ("", "")


def test_a_text_is_cut_if_any_of_its_sentences_is() -> None:
    job = SentencesJob([4, 2, 5, 2], 2, 10, sentences=[_job([4, 2]), _job([5, 2])], separators=[""])
    whole, cut = TranslationOutput([7], -1.0, None), TranslationOutput([8, 9], -1.0, None, cut=True)
    assert joined(job, [whole, whole], length_penalty=1.0).finish_reason == "stop"
    assert joined(job, [whole, cut], length_penalty=1.0).finish_reason == "length"


@pytest.mark.parametrize(("text", "parts", "edged", "between", "kept"), [
    ("A dog runs.", ["A dog runs."], [("", "")], [], ""),
    ("\U0001f60a \U0001f44d", [], [], [], "\U0001f60a \U0001f44d"),
    ("- \U0001f60a\n- A dog runs.", ["- A dog runs."], [("- \U0001f60a\n- ", "")], [], ""),
    ("1. \U0001f60a\n2. A dog runs.\n3. \U0001f44d", ["2. A dog runs."], [("1. \U0001f60a\n2. ", "\n3. \U0001f44d")],
     [], ""),
    ("A dog runs.\n- \U0001f60a\nA cat sleeps.", ["A dog runs.", "A cat sleeps."], [("", "\n- \U0001f60a"), ("", "")],
     ["\n- \U0001f60a\n"], ""),
    ("!!! A dog. ??? A cat.", ["A dog.", "A cat."], [("!!! ", " ???"), ("", "")], [" ??? "], ""),
    # a last list item of no words is a sentence of its own, kept as typed
    ("A dog runs.\n- \U0001f44d", ["A dog runs."], [("", "\n- \U0001f44d")], [], ""),
    ("- A dog runs.\n- \U0001f60a\n- \U0001f44d", ["- A dog runs."], [("- ", "\n- \U0001f60a\n- \U0001f44d")], [], ""),
    ("- 1. \U0001f60d", [], [], [], "- 1. \U0001f60d"),
])
def test_sentences_of_no_words_join_their_neighbours_edges(text: str, parts: list[str], edged: list[tuple[str, str]],
                                                           between: list[str], kept: str) -> None:
    read = translated_parts(text, sentences(text))
    assert (read.parts, read.edged, read.between, read.kept) == (parts, edged, between, kept)
    # the model reads each part within its own edges
    assert read.cores == [part.removeprefix("- ").removeprefix("2. ") for part in parts]


@pytest.mark.parametrize(("text", "core"), [
    ("A dog runs.\r\n\U0001f436\r\n\U0001f431", "A dog runs."),  # the edges say "\r\n" as "\n"
    ("\U0001f436\r\n\U0001f431\r\nA dog runs.", "A dog runs."),
    ("**A girl sings.**\r\n\U0001f1e9\U0001f1ea", "A girl sings."),
])
def test_the_model_reads_the_part_within_its_edges_as_typed(text: str, core: str) -> None:
    assert translated_parts(text, sentences(text)).cores == [core]


@pytest.mark.parametrize(("text", "expected"), [
    ("A dog", True), ("1. A dog", True), ("5 stars", True), ("1.", True),
    ("1. \U0001f44d", False), ("- 1. \U0001f60d", False), ("\U0001f436 1. \U0001f44d", False),
    ("1\ufe0f\u20e3", False), ("\u2139\ufe0f", False), ("\u2776 \U0001f44d", False), ("!!!", False)])
def test_reads_words_past_markers_and_pictographs(text: str, expected: bool) -> None:
    assert reads_words(text) is expected


def test_wraps_are_taken_off_at_most_four_deep() -> None:
    """Each level rescans what it wraps: 900 nested brackets held the event loop 34 ms a text."""
    assert edges("**(A dog runs.)**") == ("**(", ")**")
    assert edges("((((((A dog runs.))))))") == ("((((", "))))")
