"""Which row path is faster on this machine's CPU provider: rows in numpy (the CPU default), or the
device path (I/O binding, rows reordered by the row-operations graph, service/runners/row_ops.py).

    python -m loadtests.row_gather [--models models] [--rounds 5]

Prints the median time of one join/leave gather (64 running rows at 20 source positions, 16
leaving, 8 joining at 30) and of whole-request decoding of 32 test sentences (greedy and beam 5),
for both paths, in interleaved rounds. On a GPU the question does not arise: the rows stay there.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from loadtests.inputs import DATA_DIR, translation_texts
from loadtests.server import ROOT
from service.model_card import load_model_card
from service.onnx_session import CPU
from service.runners.translation import TranslationRunner


def _ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    model_dir = args.models / "translate-en-de" / "1"
    card = load_model_card(model_dir / "model.json")
    runners = {path: TranslationRunner(model_dir, card, [CPU], intra_op_threads=1, io_binding=path == "device")
               for path in ("numpy", "device")}
    sentences = translation_texts(args.data_dir, "test_2016_flickr")[:32]
    timings: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for path, runner in runners.items():
            rows, state = runner.gather_rows(None, None, None, runner.encode([[5] * 20] * 64), 20)
            joiners = runner.encode([[5] * 30] * 8)
            timings.setdefault((path, "gather"), []).append(
                _ms(partial(runner.gather_rows, rows, state, np.arange(16, 64), joiners, 30), 20))
            for beam, name in ((1, "greedy"), (5, "beam 5")):
                jobs = [runner.job(runner.tokenize(s), beam) for s in sentences]
                timings.setdefault((path, name), []).append(_ms(partial(runner.translate, jobs), 1))
    print("| what | numpy rows, ms | device path on the CPU, ms |\n|---|---:|---:|")
    for what in ("gather", "greedy", "beam 5"):
        print(f"| {what} | {statistics.median(timings[('numpy', what)]):.2f} | "
              f"{statistics.median(timings[('device', what)]):.2f} |")


if __name__ == "__main__":
    main()
