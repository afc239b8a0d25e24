"""What a model thread's turn costs beside the model run: padding a batch, cutting a window.

    python -m loadtests.turn_cost [--batches 300] [--rows 9] [--windows 300] [--window 42]

A worker thread pads each batch just after ONNX Runtime's run of the one before, which leaves
the core's caches to the model's weights and buffers: the Python and numpy code that follows
runs cold. This times (thread CPU, ``time.thread_time``) ``pad_batch`` as it is
(service/runners/sentiment.py: one list, one array) against a numpy assignment per row (how it
was), each straight after a run of the INT8 classifier on a batch of ``--rows`` texts of 20-32
subwords, in turn; then each again in a tight loop (warm).

Then ``split_by_budget`` (service/batching.py) against the same dynamic programming trying every
start of every last batch (how it was), on windows of ``--window`` SST-2 test sentences (their
subword counts; 64 clients bring windows of ~42) at the cost of a batch the INT8 classifier
starts with (~48 padded tokens), warm.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from loadtests.inputs import DATA_DIR, sentiment_texts
from service.batching import BatchPolicy, WorkItem, split_by_budget
from service.model_card import load_model_card
from service.onnx_session import open_session
from service.runners.sentiment import pad_batch
from service.runners.vocabulary import checked_tokenizer
from service.tokenization import PAD_ID

ROOT = Path(__file__).resolve().parents[1]


def numpy_rows(sequences: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """The padding as it was: the array filled, then a numpy assignment per row."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    ids = np.full((len(sequences), int(lengths.max(initial=1))), PAD_ID, dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
    return ids, lengths


def split_every_start(items: list[WorkItem[object, object]], policy: BatchPolicy) -> list[list[int]]:
    """The split as it was: the least cost of each end found over every start of its last batch.
    The batches' lengths."""
    lengths = sorted(i.length for i in items)
    best = [0.0] + [float("inf")] * len(lengths)
    cut = [0] * (len(lengths) + 1)
    for end in range(1, len(lengths) + 1):
        longest = lengths[end - 1]
        size = min(policy.max_batch_size, max(policy.max_batch_tokens // max(longest, 1), 1))
        for start in range(max(0, end - size), end):
            cost = best[start] + policy.batch_overhead_tokens + (end - start) * longest
            if cost < best[end]:
                best[end], cut[end] = cost, start
    batches: list[list[int]] = []
    end = len(lengths)
    while end > 0:
        batches.append(lengths[cut[end] : end])
        end = cut[end]
    return batches[::-1]


def padding(args: argparse.Namespace) -> None:
    model_dir = args.models / "sentiment" / "1"
    card = load_model_card(model_dir / "model.json")
    session = open_session(model_dir, card.graphs["model"], ["CPUExecutionProvider"], 1, "int8")
    inputs = [i.name for i in card.graphs["model"].inputs]
    ways: dict[str, Callable[[Sequence[Sequence[int]]], tuple[np.ndarray, np.ndarray]]] = {
        "pad_batch": pad_batch, "an assignment per row": numpy_rows}
    cold = dict.fromkeys(ways, 0.0)
    rng = random.Random(0)
    batch: list[list[int]] = []
    for _ in range(args.batches):
        batch = [[rng.randint(4, 7999) for _ in range(rng.randint(20, 32))] for _ in range(args.rows)]
        for name, way in ways.items():
            ids, lengths = way(batch)
            session.run(None, {inputs[0]: ids, inputs[1]: lengths})
            started = time.thread_time()
            way(batch)
            cold[name] += time.thread_time() - started
    print(f"thread CPU to pad a batch of {args.rows} (us), {args.batches} batches:")
    for name, way in ways.items():
        started = time.thread_time()
        for _ in range(args.batches):
            way(batch)
        warm = (time.thread_time() - started) / args.batches
        print(f"  {name:22s} after a model run {cold[name] / args.batches * 1e6:6.1f}   warm {warm * 1e6:6.1f}")


def splitting(args: argparse.Namespace) -> None:
    model_dir = args.models / "sentiment" / "1"
    card = load_model_card(model_dir / "model.json")
    tokenizer = checked_tokenizer(model_dir, "text", card.tokenizers["text"])
    lengths = [len(tokenizer.encode(text)) for text in sentiment_texts(args.data_dir, "test")]
    rng = random.Random(0)
    # only their lengths count here: no payload, no future
    windows: list[list[WorkItem[object, object]]] = [
        [WorkItem(None, rng.choice(lengths), 0.0, None) for _ in range(args.window)]  # type: ignore[arg-type]
        for _ in range(args.windows)]
    policy = BatchPolicy(max_batch_size=64, max_batch_tokens=8192, max_queue_delay_s=0.002, max_queue_size=1024,
                         batch_overhead_tokens=48.0)
    ways: dict[str, Callable[[list[WorkItem[object, object]], BatchPolicy], object]] = {
        "split_by_budget": split_by_budget, "every start tried": split_every_start}
    print(f"thread CPU to cut a window of {args.window} texts into batches (us), {args.windows} windows:")
    for name, way in ways.items():
        started = time.thread_time()
        for window in windows:
            way(window, policy)
        print(f"  {name:22s} {(time.thread_time() - started) / len(windows) * 1e6:6.1f}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=300)
    p.add_argument("--rows", type=int, default=9)
    p.add_argument("--windows", type=int, default=300)
    p.add_argument("--window", type=int, default=42)
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    args = p.parse_args(argv)
    padding(args)
    splitting(args)


if __name__ == "__main__":
    main()
