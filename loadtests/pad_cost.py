"""What padding a batch costs a model thread, right after a model run and warm.

    python -m loadtests.pad_cost [--batches 300] [--rows 9] [--models models]

A worker thread pads each batch just after ONNX Runtime's run of the one before, which leaves
the core's caches to the model's weights and buffers: the Python and numpy code that follows
runs cold. This times (thread CPU, ``time.thread_time``) ``pad_batch`` as it is
(service/runners/sentiment.py: one list, one array) against a numpy assignment per row (how it
was), each straight after a run of the INT8 classifier on a batch of ``--rows`` texts of 20-32
subwords, in turn; then each again in a tight loop (warm).
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from service.model_card import load_model_card
from service.onnx_session import open_session
from service.runners.sentiment import pad_batch
from service.tokenization import PAD_ID

ROOT = Path(__file__).resolve().parents[1]


def numpy_rows(sequences: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """The padding as it was: the array filled, then a numpy assignment per row."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    ids = np.full((len(sequences), int(lengths.max(initial=1))), PAD_ID, dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
    return ids, lengths


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=300)
    p.add_argument("--rows", type=int, default=9)
    p.add_argument("--models", type=Path, default=ROOT / "models")
    args = p.parse_args(argv)
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


if __name__ == "__main__":
    main()
