from __future__ import annotations

import gzip
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sentencepiece as spm

from service.tokenization import SubwordTokenizer
from service.truecasing import Truecaser
from service.word_memory import WordMemory
from tests.conftest import COMMITTED_MODELS, DATA_DIR, needs_data

SENTIMENT = COMMITTED_MODELS / "sentiment" / "1" / "sentiment.spm.model"
TRANSLATOR = COMMITTED_MODELS / "translate-en-de" / "1"
# what the normalisers treat specially, in ASCII: quotes, clitics, markup, punctuation, spaces
_ATOMS = ["'", "''", "``", "`", "n't", "'s", "'re", "'ve", "'ll", "'d", "'m", "'t", "-lrb-", "-rrb-", "-lcb-",
          "-", "--", "...", ".", ",", "!", "?", '"', "(", ")", "a", "b", "it", "do", "don", "I", "A", "x", "1",
          "3000", " ", " ", " ", "  ", ";", ":", "/", "\\", "*", "&", "$", "#", "=", "+", "<", ">", "|", "~",
          "^", "_", "@", "%", "[", "]", "{", "}"]


def _tokenizers() -> list[SubwordTokenizer]:
    """The sentiment tokenizer and the translator's target one (its normaliser, no truecaser)."""
    return [SubwordTokenizer(SENTIMENT, "sentiment"), SubwordTokenizer(TRANSLATOR / "target.spm.model", "translation")]


def _random_ascii(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(_ATOMS) for _ in range(rng.randint(1, 25))) for _ in range(count)]


def _corpus_lines() -> Iterator[str]:
    for split in ("dev", "test"):
        for line in (DATA_DIR / "sst2" / f"stsa.binary.{split}").read_text(encoding="utf-8").splitlines():
            yield line.partition(" ")[2]
    with gzip.open(DATA_DIR / "multi30k" / "val.en.gz", "rt", encoding="utf-8") as handle:
        yield from handle


def _score(tokenizer: SubwordTokenizer, ids: list[int]) -> float:
    return sum(tokenizer._sp.get_score(i) for i in ids)


@needs_data
def test_a_text_gets_the_ids_of_tokenising_it_whole_on_both_corpora() -> None:
    for tokenizer in _tokenizers():
        assert tokenizer.word_memory is not None and tokenizer.word_memory.enabled
        texts = list(_corpus_lines())
        for _ in range(2):  # learning its words, then from memory
            assert [t for t in texts if tokenizer.encode(t) != tokenizer.encode_whole(t)] == []
        assert len(tokenizer.word_memory) > 5_000


def test_random_ascii_gets_the_whole_text_s_ids_or_a_segmentation_of_equal_score() -> None:
    """Where two segmentations of a word score the same ("dondon" as don|don or do|ndon, "3000"
    as 3|0|00 or 3|00|0), sentencepiece's choice depends on rounding that the text before the
    word moves; the memory gives the word's own, the same in every text."""
    for tokenizer in _tokenizers():
        texts = _random_ascii(20_000)
        for text in texts + texts:
            memory, whole = tokenizer.encode(text), tokenizer.encode_whole(text)
            if memory != whole:
                assert tokenizer._sp.decode(memory) == tokenizer._sp.decode(whole), text
                assert _score(tokenizer, memory) == pytest.approx(_score(tokenizer, whole), abs=1e-4), text


def test_a_word_has_the_same_ids_whatever_text_taught_it() -> None:
    contexts = ["making 95,000 a year", "95,000", "they paid 95,000 for a car , and 3000 more"]
    answers = []
    for order in (contexts, contexts[::-1]):
        tokenizer = SubwordTokenizer(TRANSLATOR / "target.spm.model", "translation")
        answers.append({text: tokenizer.encode(text) for text in order})
        assert tokenizer.encode("95,000") == tokenizer.encode_whole("95,000")  # the word's own ids
    assert answers[0] == answers[1]


def test_text_beyond_printable_ascii_is_tokenised_whole_and_teaches_nothing() -> None:
    tokenizer = SubwordTokenizer(SENTIMENT, "sentiment")
    assert tokenizer.word_memory is not None
    for text in ["Café au lait 😀", "“Smart,” she said.", "tab\there", "line\nbreak", "ﬁne"]:
        assert tokenizer.encode(text) == tokenizer.encode_whole(text)
    assert len(tokenizer.word_memory) == 0
    assert tokenizer.encode("It's GREAT!!!") == tokenizer.encode_whole("It's GREAT!!!")
    assert "It's" in tokenizer.word_memory and "GREAT!!!" in tokenizer.word_memory


def test_a_tokenizer_with_a_truecaser_remembers_no_words() -> None:
    """A truecaser reads a word's case by its place in the sentence: not word by word."""
    tokenizer = SubwordTokenizer(TRANSLATOR / "source.spm.model", "translation",
                                 Truecaser.load(TRANSLATOR / "source.truecase.txt"))
    assert tokenizer.word_memory is None
    assert tokenizer.encode("A MAN RIDES A BIKE.") == tokenizer.encode_whole("A MAN RIDES A BIKE.")


def test_a_vocabulary_with_pieces_across_words_turns_the_memory_off(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    rng = random.Random(0)
    words = ["of the", "dog", "cat", "house", "sits", "runs", "in the", "garden", "red", "blue"]
    corpus.write_text("\n".join(" ".join(rng.choice(words) for _ in range(6)) for _ in range(2_000)))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "m"), vocab_size=40,
                                   split_by_whitespace=False, pad_id=0, unk_id=1, bos_id=2, eos_id=3,
                                   minloglevel=2)
    tokenizer = SubwordTokenizer(tmp_path / "m.model", "translation")
    sp = tokenizer._sp
    assert any("▁" in sp.id_to_piece(i)[1:] for i in range(sp.get_piece_size()))  # pieces that span words
    assert tokenizer.word_memory is not None and not tokenizer.word_memory.enabled
    for text in ["of the dog", "the dog of the house"]:
        assert tokenizer.encode(text) == tokenizer.encode_whole(text)
    assert len(tokenizer.word_memory) == 0


def test_a_full_memory_forgets_its_older_half_and_long_words_are_not_kept() -> None:
    tokenizer = SubwordTokenizer(SENTIMENT, "sentiment")
    memory = tokenizer.word_memory = WordMemory(tokenizer._sp, tokenizer.normalize, capacity=10, longest=12)
    words = [f"word{k}" for k in range(25)]
    for k in range(0, 25, 5):
        text = " ".join(words[k:k + 5])
        assert tokenizer.encode(text) == tokenizer.encode_whole(text)
        assert len(memory) <= 10
    assert words[-1] in memory and words[0] not in memory
    long_word = "supercalifragilistic"
    assert tokenizer.encode(f"a {long_word}") == tokenizer.encode_whole(f"a {long_word}")
    assert long_word not in memory and "a" in memory
    huge = " ".join(f"w{k}" for k in range(40))  # more new words than the memory holds
    assert tokenizer.encode(huge) == tokenizer.encode_whole(huge) and len(memory) <= 10


def _gil_let_go(call: Callable[[], object], times: int) -> int:
    """How many turns a thread waiting for the GIL got while ``call`` ran ``times`` times: none
    unless it lets the GIL go (the switch interval, 1 s, is far longer than the calls)."""
    turns = 0
    stop = False

    def other() -> None:
        nonlocal turns
        while not stop:
            turns += 1
            time.sleep(0)  # gives the GIL back at once

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1.0)
    thread = threading.Thread(target=other)
    try:
        thread.start()
        time.sleep(0.01)
        before = turns
        for _ in range(times):
            call()
        return turns - before
    finally:
        stop = True
        thread.join()
        sys.setswitchinterval(interval)


def test_remembered_words_are_tokenised_without_letting_the_gil_go() -> None:
    """sentencepiece's binding lets the GIL go on every call, and on the event loop a model
    thread then takes it (service/word_memory.py)."""
    tokenizer = SubwordTokenizer(SENTIMENT, "sentiment")
    text = "it 's a charming and often affecting journey ."
    tokenizer.encode(text)
    assert _gil_let_go(lambda: tokenizer.encode(text), 200) == 0
    assert _gil_let_go(lambda: time.sleep(0), 20) > 0  # the measure sees a let-go
