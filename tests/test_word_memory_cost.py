"""loadtests/word_memory_cost.py: tokenising unseen text through the word memory."""

from __future__ import annotations

import subprocess
import sys

from loadtests import word_memory_cost
from loadtests.word_memory_cost import sentiment_tokenizer, through_memory
from tests.conftest import COMMITTED_MODELS, DATA_DIR, ROOT, needs_data


def test_through_memory_counts_the_texts_that_teach_it_a_word() -> None:
    tokenizer = sentiment_tokenizer(COMMITTED_MODELS)
    texts = ["a fine film", "a fine film", "a fine cast", "a film"]
    cpu_us, taught = through_memory(tokenizer, texts)
    assert cpu_us > 0
    assert taught == 2 / 4  # the first text and "cast"; the others were all remembered
    assert through_memory(tokenizer, texts)[1] == 0


@needs_data
def test_the_report_streams_every_corpus_and_the_repeated_test_set_teaches_nothing() -> None:
    run = subprocess.run([sys.executable, "-m", "loadtests.word_memory_cost", "--block", "10000",
                          "--data-dir", str(DATA_DIR), "--models", str(COMMITTED_MODELS)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    *lines, footer = run.stdout.splitlines()[1:]
    rows = [line.split() for line in lines]
    names = [" ".join(row[:-5]) for row in rows]
    assert names[0] == "SST-2 train" and "Multi30k train (en)" in names and names[-1] == "SST-2 test again"
    first, last = rows[0], rows[-1]
    assert float(first[-4].rstrip("%")) > 50  # a fresh memory learns from most texts
    assert last[-4] == "0.0%"  # the benchmarks' case: every word remembered
    assert int(last[-3].replace(",", "")) > 20_000
    assert footer.startswith(f"the memory holds {last[-3]} words in ") and footer.endswith(" bytes a word)")
    assert word_memory_cost.MODELS == ROOT / "models"
