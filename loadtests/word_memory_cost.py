"""What tokenising a text costs with its words' ids remembered, on text never seen before.

    python -m loadtests.word_memory_cost [--block 1000] [--data-dir ../shared/data]

The sentiment tokenizer remembers each raw word's subword ids (service/word_memory.py), so the
benchmarks, which send the same SST-2 test sentences again and again, see only remembered words.
This streams texts it has not seen through a fresh tokenizer of models/sentiment, in blocks of
``--block``: the SST-2 training sentences, then the English side of Multi30k's training set
(another domain, cased), then the SST-2 test sentences twice (the benchmarks' case, then warm).
For each block it prints the share of texts that taught the memory a word (a word it did not
hold), how many words it held before the block, and the CPU a text (``time.thread_time``)
tokenised through the memory against normalised and encoded whole (as before), each timed on the
same block in turn; at the end, what the memory's table takes.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from loadtests.inputs import DATA_DIR, sentiment_texts, translation_texts
from service.model_card import load_model_card
from service.tokenization import SubwordTokenizer
from service.word_memory import WordMemory

MODELS = Path(__file__).resolve().parent.parent / "models"


def sentiment_tokenizer(models: Path) -> SubwordTokenizer:
    folder = models / "sentiment" / "1"
    card = load_model_card(folder / "model.json")
    return SubwordTokenizer.from_spec(folder, card.tokenizers["text"])


def streams(data_dir: Path) -> Iterator[tuple[str, list[str]]]:
    yield "SST-2 train", sentiment_texts(data_dir, "train")
    yield "Multi30k train (en)", translation_texts(data_dir, "train")
    test = sentiment_texts(data_dir, "test")
    yield "SST-2 test", test
    yield "SST-2 test again", test


def cpu_per_text(encode: Callable[[str], list[int]], texts: list[str]) -> float:
    started = time.thread_time()
    for text in texts:
        encode(text)
    return (time.thread_time() - started) / len(texts) * 1e6


def through_memory(tokenizer: SubwordTokenizer, texts: list[str]) -> tuple[float, float]:
    """The CPU a text tokenised through the memory (us), and the share of texts that taught it a word."""
    memory = tokenizer.word_memory
    assert memory is not None
    taught = 0

    def encode(text: str) -> list[int]:
        nonlocal taught
        before = len(memory)
        ids = tokenizer.encode(text)
        taught += len(memory) != before
        return ids

    return cpu_per_text(encode, texts), taught / len(texts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--block", type=int, default=1000, help="texts a line")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("--models", type=Path, default=MODELS)
    args = p.parse_args()
    tokenizer = sentiment_tokenizer(args.models)
    memory = tokenizer.word_memory
    if memory is None or not memory.enabled:
        raise SystemExit("this tokenizer does not remember words (a truecaser, or a vocabulary it cannot)")
    whole = tokenizer.encode_whole
    print(f"{'texts':<22} {'block':>11} {'taught':>10} {'remembered':>10} {'memory us':>10} {'whole us':>9}")
    for name, texts in streams(args.data_dir):
        for start in range(0, len(texts), args.block):
            block = texts[start:start + args.block]
            size_before = len(memory)
            us_memory, taught = through_memory(tokenizer, block)
            us_whole = cpu_per_text(whole, block)
            print(f"{name:<22} {start:>5}-{start + len(block):<5} {taught:>10.1%} "
                  f"{size_before:>10,} {us_memory:>10.1f} {us_whole:>9.1f}", flush=True)
    print(f"the memory holds {len(memory):,} words in {footprint(memory) / 1e6:.1f} MB "
          f"({footprint(memory) / max(len(memory), 1):.0f} bytes a word)")


def footprint(memory: WordMemory) -> int:
    """Bytes the memory's table takes: the dict, its words, their id tuples and the ids that are
    not Python's shared small ints."""
    table = memory._ids
    return sys.getsizeof(table) + sum(sys.getsizeof(word) + sys.getsizeof(ids)
                                      + sum(sys.getsizeof(i) for i in ids if i > 256) for word, ids in table.items())


if __name__ == "__main__":
    main()
