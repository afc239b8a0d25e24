"""What the translation throughput ratios can be at best on this machine (greedy decoding).

The benchmark's targets are ratios (32 clients / 1 client, iteration-level / whole-request).
How far batching can lift them depends on how the cost of one decoder step grows with its rows,
which is a property of the hardware, not of the server. This module measures that cost curve
(and the encoder's) with ONNX Runtime alone, one thread per lane as the server runs it, and
computes the ratios a server with **no** HTTP, Python or scheduling cost would reach with K
decode lanes (workers x instances, at most one per core) all busy:

- 1 client: one request at a time: encode 1 sentence, then L steps of 1 row;
- iteration-level at C clients: C/K rows per lane, always full: per request, its share of an
  encoder run of C/K sentences plus L steps at 1/(C/K) of a (C/K)-row step;
- whole-request at C clients: batches of C/K per lane, each decoded until its longest request
  ends, rows leaving as they finish (sampled from the real length distribution).

These are upper bounds for the measured ratios, not predictions: a real server pays for HTTP,
tokenisation and its own bookkeeping on the same cores.

    python -m loadtests.ceiling [--precision fp32 int8] [--source-len 16]

prints the decoder step and encoder costs by rows in each precision, measured in interleaved
rounds (INT8 needs `make int8`); `make bench` prints them for the precision it serves.

    python -m loadtests.ceiling --ops 28 [--precision fp32]

prints where one decoder step of that many rows spends its time, node by node (ONNX Runtime's
profiler, one thread), with the rate of its matrix nodes in multiply-accumulates per second, to
read against what one core can do: how far the step itself could get faster.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.model_card import load_model_card
from service.onnx_session import Precision
from service.runners import load_runner
from service.runners.translation import TranslationRunner

ROWS = (1, 2, 4, 8, 16, 24, 32, 48, 64)


@dataclass
class Ceiling:
    step_ms: dict[int, float]  # decoder step time by rows (one thread)
    encode_ms: dict[int, float]  # encoder run time by sentences
    one_client: float  # requests/s
    iteration: dict[int, float]  # clients -> requests/s
    whole: dict[int, float]
    lanes: int

    def lines(self) -> list[str]:
        steps = ", ".join(f"{r}: {t:.2f}" for r, t in self.step_ms.items())
        encodes = ", ".join(f"{n}: {t:.2f}" for n, t in self.encode_ms.items())
        return [
            f"decoder step ms by rows (1 thread): {steps}",
            f"encoder ms by sentences (1 thread): {encodes}",
            f"ideal requests/s (no HTTP/Python cost, {self.lanes} lanes busy, one core each): "
            f"1 client {self.one_client:.0f}; "
            + "; ".join(f"{c} clients iteration {self.iteration[c]:.0f}, whole-request {self.whole[c]:.0f}"
                        for c in self.iteration),
            "ideal ratios: " + "; ".join(
                f"{c}/1 {self.iteration[c] / self.one_client:.1f}x" for c in self.iteration)
            + "; " + "; ".join(f"iteration/whole at {c} {self.iteration[c] / self.whole[c]:.2f}x"
                               for c in self.iteration),
        ]


def _timed(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def measure(runner: TranslationRunner, source_len: int, rounds: int = 5,
            repeats: int = 5) -> tuple[dict[int, float], dict[int, float]]:
    """Step and encoder times by rows. Row counts are timed in interleaved rounds and each keeps
    its fastest round: a ceiling is what the hardware can do, and on a shared machine the slower
    rounds measure the neighbours."""
    steps: dict[int, list[float]] = {rows: [] for rows in ROWS}
    encodes: dict[int, list[float]] = {rows: [] for rows in ROWS}
    for _ in range(rounds):
        for rows in ROWS:
            batch = [[5] * source_len] * rows
            decoder_rows, state = runner.gather_rows(None, None, None, runner.encode(batch), source_len)
            prev = np.full(rows, 5, dtype=np.int64)
            parents = np.arange(rows, dtype=np.int64)
            steps[rows].append(_timed(partial(runner.step, prev, state, parents, decoder_rows, False),
                                      repeats))
            encodes[rows].append(_timed(partial(runner.encode, batch), max(1, repeats // 2)))
    return {r: min(t) for r, t in steps.items()}, {r: min(t) for r, t in encodes.items()}


def _interp(table: dict[int, float], x: float) -> float:
    keys = sorted(table)
    return float(np.interp(x, keys, [table[k] for k in keys])) if x > 0 else 0.0


def compute(steps: dict[int, float], encodes: dict[int, float], lengths: Sequence[int],
            clients: Sequence[int] = (32, 64), lanes: int = 2, samples: int = 300) -> Ceiling:
    """``lengths``: decoder steps per request (output subwords + </s>) of the benchmark sample."""
    mean_len = statistics.fmean(lengths)
    one = 1000 / (encodes[1] + mean_len * steps[1])
    rng = random.Random(0)
    iteration, whole = {}, {}
    for c in clients:
        per_lane = max(1, c // lanes)
        per_request_ms = _interp(encodes, per_lane) / per_lane + mean_len * _interp(steps, per_lane) / per_lane
        iteration[c] = lanes * 1000 / per_request_ms
        batch_ms = []
        for _ in range(samples):
            batch = rng.choices(lengths, k=per_lane)
            alive = [sum(1 for n in batch if n > t) for t in range(max(batch))]
            batch_ms.append(_interp(encodes, per_lane) + sum(_interp(steps, a) for a in alive))
        whole[c] = lanes * per_lane * 1000 / statistics.fmean(batch_ms)
    return Ceiling(steps, encodes, one, iteration, whole, lanes)


@dataclass
class NodeTime:
    op: str
    node: str
    us: float  # per step, median over the profiled steps
    macs: int  # multiply-accumulates per step (matrix products, GRU); 0 for the rest

    @property
    def gmacs(self) -> float:
        return self.macs / self.us / 1e3 if self.us else 0.0


def _macs(op: str, args: dict[str, Any]) -> int:
    """The multiply-accumulates of one run of a matrix node, from the shapes ONNX Runtime's profiler
    recorded (of the inputs that are not weights, and the outputs): a matrix product's output
    elements x its inner dimension; a GRU's time steps x directions x rows x 3H x (inputs + H), from
    X [steps, rows, inputs] and Y [steps, directions, rows, H]. 0 for the other nodes."""
    shapes = [next(iter(t.values())) for t in args.get("input_type_shape", [])]
    out = [next(iter(t.values())) for t in args.get("output_type_shape", [])]
    if not shapes or not out:
        return 0
    if op in ("MatMul", "MatMulNBits", "Gemm"):
        return int(np.prod(out[0])) * int(shapes[0][-1])
    if op == "GRU" and len(shapes[0]) == 3 and len(out[0]) == 4:
        (steps, rows, inputs), (_, directions, _, hidden) = shapes[0], out[0]
        return int(steps * directions * rows * 3 * hidden * (inputs + hidden))
    return 0


def op_profile(model_dir: Path, precision: Precision, rows: int, source_len: int, steps: int = 300) -> list[NodeTime]:
    """Where one decoder step of ``rows`` rows spends its time (ONNX Runtime's profiler, one thread),
    the slowest node first."""
    card = load_model_card(model_dir / "model.json")
    runner = TranslationRunner(model_dir, card, ["CPUExecutionProvider"], 1, precision=precision, profile=True)
    batch = [[5] * source_len] * rows
    decoder_rows, state = runner.gather_rows(None, None, None, runner.encode(batch), source_len)
    prev, parents = np.full(rows, 5, dtype=np.int64), np.arange(rows, dtype=np.int64)
    for _ in range(steps):
        runner.step(prev, state, parents, decoder_rows, False)
    profile = Path(runner.decoder.end_profiling())
    Path(runner.encoder.end_profiling()).unlink(missing_ok=True)  # profiled too, by the same option
    try:
        events = json.loads(profile.read_text())
    finally:
        profile.unlink(missing_ok=True)
    times: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    macs: dict[str, int] = {}
    for event in events:
        name = str(event.get("name", ""))
        if event.get("cat") == "Node" and name.endswith("_kernel_time"):
            op, node = event["args"]["op_name"], name.removesuffix("_kernel_time")
            times[(op, node)].append(float(event["dur"]))
            macs[node] = _macs(op, event["args"])
    nodes = [NodeTime(op, node, statistics.median(us), macs[node]) for (op, node), us in times.items()]
    return sorted(nodes, key=lambda n: -n.us)


def matmul_peak(rows: int = 256, inner: int = 1024, cols: int = 1024, repeats: int = 20) -> float:
    """GMAC/s of one large fp32 matrix product on one ONNX Runtime thread: about what a core can do,
    to read the decoder's matrix nodes against."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((inner, cols), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "peak",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, inner])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, cols])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = np.ones((rows, inner), dtype=np.float32)
    seconds = _timed(lambda: session.run(None, {"x": x}), repeats) / 1000
    return rows * inner * cols / seconds / 1e9


def print_op_profile(nodes: list[NodeTime], title: str) -> None:
    total = sum(n.us for n in nodes)
    print(f"{title}: {total:,.0f} us a step in its nodes")
    print("| node | op | us | share | GMAC/s |\n|---|---|---:|---:|---:|")
    for n in nodes[:12]:
        rate = f"{n.gmacs:.1f}" if n.macs else ""
        print(f"| {n.node} | {n.op} | {n.us:,.0f} | {n.us / total:.1%} | {rate} |")
    by_op: dict[str, float] = collections.defaultdict(float)
    for n in nodes:
        by_op[n.op] += n.us
    ops = sorted(by_op.items(), key=lambda item: -item[1])[:6]
    print("by operator: " + ", ".join(f"{op} {us / total:.0%}" for op, us in ops))
    matrix = [n for n in nodes if n.macs]
    if matrix:
        print(f"matrix nodes: {sum(n.us for n in matrix) / total:.0%} of the step at "
              f"{sum(n.macs for n in matrix) / sum(n.us for n in matrix) / 1e3:.1f} GMAC/s")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=Path("models/translate-en-de/1"))
    p.add_argument("--precision", nargs="+", choices=["fp32", "int8"], default=["fp32", "int8"])
    p.add_argument("--source-len", type=int, default=16, help="source subwords (test_2016_flickr's median is 16)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each row count keeps its fastest")
    p.add_argument("--ops", type=int, metavar="ROWS", help="profile one decoder step of ROWS rows, node by node")
    args = p.parse_args(argv)
    if args.ops:
        for precision in args.precision:
            print_op_profile(op_profile(args.model_dir, precision, args.ops, args.source_len),
                             f"{args.model_dir} {precision}, decoder step of {args.ops} rows, source "
                             f"{args.source_len} subwords, one thread")
        print(f"for reference, a 256 x 1024 x 1024 fp32 matrix product on one thread: {matmul_peak():.1f} GMAC/s")
        return
    runners = {}
    for precision in args.precision:
        runner = load_runner(args.model_dir, ["CPUExecutionProvider"], intra_op_threads=1, precision=precision)
        assert isinstance(runner, TranslationRunner)
        runners[precision] = runner
    best: dict[str, tuple[dict[int, float], dict[int, float]]] = {}
    for _ in range(args.rounds):  # precisions interleaved, so the machine's drift falls on each alike
        for precision, runner in runners.items():
            steps, encodes = measure(runner, args.source_len, rounds=1)
            old = best.get(precision)
            best[precision] = (steps, encodes) if old is None else (
                {r: min(t, old[0][r]) for r, t in steps.items()}, {r: min(t, old[1][r]) for r, t in encodes.items()})
    print(f"{args.model_dir}, source {args.source_len} subwords, one thread, best of {args.rounds} rounds (ms)")
    print("| rows | " + " | ".join(f"step {p} | encoder {p}" for p in best) + " |")
    print("|---:|" + "---:|---:|" * len(best))
    for rows in ROWS:
        cells = [f"{steps[rows]:.3f} | {encodes[rows]:.2f}" for steps, encodes in best.values()]
        print(f"| {rows} | " + " | ".join(cells) + " |")
    if len(best) == 2:
        (a, (sa, _)), (b, (sb, _)) = best.items()
        print("step " + b + " / " + a + ": " + ", ".join(f"{r} rows {sb[r] / sa[r]:.2f}x" for r in (1, 8, 32, 64)))


if __name__ == "__main__":
    main()
