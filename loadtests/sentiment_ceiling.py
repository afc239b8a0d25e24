"""What served sentiment throughput can be at best on this machine: the classifier's own CPU per
sentence, by batch size, on one thread as a batch worker runs it.

The server's batch worker calls ONNX Runtime with one intra-op thread (SEQSERVE_ORT_INTRA_OP_THREADS
1, one worker where `SEQSERVE_INSTANCES=auto` picks one), on batches cut from a window of queued
sentences and sorted by length (service/batching.py ``split_by_budget``). Its model CPU per
sentence bounds what it can serve: one worker thread, busy all the time with nothing else, answers
at most 1e6 / (us per sentence) sentences a second. `make bench`'s raw limit is another figure:
ORT's defaults (every core, spinning threads) on the whole length-sorted test set.

Batches are timed two ways, over the SST-2 test sentences: of similar lengths (a random run of
the length-sorted sentences, as the worker's split makes them) and of random lengths (padding to
the longest; the LSTM runs every padded step). Thread CPU, in interleaved rounds; each batch size
keeps its lowest median.

    python -m loadtests.sentiment_ceiling [--precision int8 fp32] [--seconds 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

from loadtests.inputs import DATA_DIR, sentiment_texts
from service.runners import SentimentRunner, load_runner

SIZES = (1, 2, 4, 8, 16, 32, 64)


def cpu_per_sentence(runner: SentimentRunner, ordered: Sequence[Sequence[int]], size: int, similar: bool,
                     seconds: float, seed: int = 0) -> float:
    """Median thread-CPU microseconds per sentence of batches of ``size``: runs of the
    length-sorted ``ordered`` (``similar``) or random samples of them, for about ``seconds``."""
    rng = random.Random(seed)
    size = min(size, len(ordered))
    per_sentence: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(per_sentence) < 3:
        if similar:
            start = rng.randrange(len(ordered) - size + 1)
            batch = ordered[start : start + size]
        else:
            batch = rng.sample(ordered, size)
        began = time.thread_time()
        runner.run(batch)
        per_sentence.append((time.thread_time() - began) / size * 1e6)
    return statistics.median(per_sentence)


def sweep(runners: dict[str, SentimentRunner], ordered: Sequence[Sequence[int]], sizes: Sequence[int],
          seconds: float, rounds: int) -> dict[str, dict[tuple[int, bool], float]]:
    """{precision: {(size, similar lengths): us per sentence}}, the lowest over ``rounds``
    interleaved rounds (the machine's drift falls on each alike)."""
    best: dict[str, dict[tuple[int, bool], float]] = {p: {} for p in runners}
    for round_ in range(rounds):
        for precision, runner in runners.items():
            for size in sizes:
                for similar in (True, False):
                    us = cpu_per_sentence(runner, ordered, size, similar, seconds / 2, seed=round_)
                    key = (size, similar)
                    best[precision][key] = min(us, best[precision].get(key, us))
    return best


def lines(best: dict[str, dict[tuple[int, bool], float]], sizes: Sequence[int]) -> list[str]:
    out = ["| batch | " + " | ".join(f"{p} similar lengths | {p} random lengths" for p in best) + " |",
           "|---:|" + "---:|---:|" * len(best)]
    for size in sizes:
        cells = [f"{table[(size, True)]:,.0f} | {table[(size, False)]:,.0f}" for table in best.values()]
        out.append(f"| {size} | " + " | ".join(cells) + " |")
    for precision, table in best.items():
        size, us = min(((s, table[(s, True)]) for s in sizes), key=lambda item: item[1])
        out.append(f"{precision}: one worker thread serves at most **{1e6 / us:,.0f} sentences/s** "
                   f"({us:,.0f} us of CPU a sentence at batch {size}, similar lengths, nothing else on its core)")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=Path("models/sentiment/1"))
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("--precision", nargs="+", choices=["int8", "fp32"], default=["int8", "fp32"])
    p.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    p.add_argument("--seconds", type=float, default=1.0, help="per batch size and round, both kinds of batch")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    texts = sentiment_texts(args.data_dir, "test")
    runners: dict[str, SentimentRunner] = {}
    for precision in args.precision:
        runner = load_runner(args.model_dir, ["CPUExecutionProvider"], intra_op_threads=1, precision=precision)
        assert isinstance(runner, SentimentRunner)
        runners[precision] = runner
    # the precisions share the card's tokenizer: the sentences are tokenised and sorted once
    ordered = sorted((next(iter(runners.values())).tokenize(t) for t in texts), key=len)
    print(f"{args.model_dir}: {len(texts)} SST-2 test sentences "
          f"({statistics.mean(len(i) for i in ordered):.1f} subwords on average), one ONNX "
          f"Runtime thread, us of thread CPU a sentence (lowest median of {args.rounds} rounds)")
    for line in lines(sweep(runners, ordered, args.sizes, args.seconds, args.rounds), args.sizes):
        print(line)


if __name__ == "__main__":
    main()
