"""Serving benchmark: the served model against its raw ONNX Runtime limit, in one run.

    python -m loadtests.bench_service [--duration 8] [--out reports/bench_service.md]
    python -m loadtests.bench_service --baseline ../other-checkout   (this vs that, loadtests/baseline.py)

Prints (and writes as markdown):
  - raw ONNX Runtime throughput of the sentiment model at a range of batch sizes (no HTTP) on
    the SST-2 test sentences, and its single-request latency;
  - start-up to ready of `python -m service`;
  - sentiment over HTTP: p50 at 1 client, sentences/s at 64 clients, as a fraction of raw best;
  - translation over HTTP: requests/s at 1, 32 and 64 clients (iteration-level scheduling),
    the same at 64 clients with whole-request batching, p50 by source-length bucket, and a
    check that every served translation equals solo decoding of the same sentence.
Loopback only; every phase is bounded in time and requests.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadtests import baseline, ceiling
from loadtests.http_client import LoadResult, encode_post
from loadtests.inputs import DATA_DIR, sentiment_texts, translation_texts
from loadtests.load_generator import LoadGenerator, default_processes
from loadtests.server import OWN_SETTINGS, ROOT, ServerProcess
from service.onnx_session import choose_providers
from service.runners import SentimentRunner, TranslationRunner, load_runner
from service.settings import Settings


# --- raw ONNX Runtime -----------------------------------------------------------------------
class RawSentiment:
    """The model alone in ONNX Runtime with ORT's own defaults (all cores, spinning threads,
    memory arena): the strictest limit to hold the served figure against. Batches are cut from
    the length-sorted sentences: the raw limit at its best, stricter than what the server sees."""

    def __init__(self, runner: SentimentRunner, sentences: list[str], sizes: list[int]) -> None:
        import onnxruntime as ort

        runner.session = ort.InferenceSession(str(runner.model_dir / runner.card.graphs["model"].file),
                                              providers=["CPUExecutionProvider"])
        self.runner = runner
        self.in_order = [runner.tokenize(s) for s in sentences]
        self.ids = sorted(self.in_order, key=len)
        self.timings: dict[int, list[float]] = {size: [] for size in sizes}
        # for context only: batches in the order the sentences come (what a naive batch job does)
        self.in_order_timings: dict[int, list[float]] = {size: [] for size in sizes}

    def _time(self, ids: list[list[int]], size: int) -> float:
        batches = [ids[j : j + size] for j in range(0, len(ids), size)]
        self.runner.run(batches[0])
        start = time.perf_counter()
        for batch in batches:
            self.runner.run(batch)
        return len(ids) / (time.perf_counter() - start)

    def sweep(self) -> None:
        """One timing per batch size (called once per round, between the served runs)."""
        for size in self.timings:
            self.timings[size].append(self._time(self.ids, size))
            self.in_order_timings[size].append(self._time(self.in_order, size))

    def throughput(self, sorted_by_length: bool = True) -> dict[int, float]:
        """Median per batch size: the best of single noisy timings would pick the luckiest one."""
        timings = self.timings if sorted_by_length else self.in_order_timings
        return {size: statistics.median(t) for size, t in timings.items()}

    def best(self, sorted_by_length: bool = True) -> tuple[int, float]:
        table = self.throughput(sorted_by_length)
        size = max(table, key=table.__getitem__)
        return size, table[size]

    def report(self) -> dict[str, Any]:
        size, best = self.best()
        return {"throughput": self.throughput(), "best_size": size, "best": best}

    def single_p50_ms(self) -> float:
        singles = []
        for x in self.ids[::6][:300]:
            start = time.perf_counter()
            self.runner.run([x])
            singles.append(time.perf_counter() - start)
        return statistics.median(singles) * 1000


def http_sentiment(port: int, sentences: list[str], clients: int, duration: float,
                   generator: LoadGenerator | None = None) -> LoadResult:
    requests = [encode_post("/v1/sentiment", {"text": s}) for s in sentences]
    return (generator or LoadGenerator()).run(port, requests, clients, duration)[0]


def http_translate(port: int, sources: list[str], clients: int, duration: float, beam_size: int,
                   record: dict[int, bytes] | None = None, generator: LoadGenerator | None = None,
                   stream: bool = False) -> LoadResult:
    extra = {"stream": True} if stream else {}
    requests = [encode_post("/v1/translate", {"text": s, "beam_size": beam_size, **extra}) for s in sources]
    result, bodies = (generator or LoadGenerator()).run(port, requests, clients, duration, keyed=True)
    if record is not None:
        record.update(bodies)
    return result


def length_buckets(source_ids: list[list[int]], result: LoadResult) -> dict[str, float]:
    """p50 latency by source length (subwords, without </s>); needs result.tagged latencies."""
    buckets: dict[str, list[float]] = {}
    for key, latency in result.tagged:
        n = len(source_ids[key]) - 1
        name = "1-10" if n <= 10 else "11-20" if n <= 20 else "21-30" if n <= 30 else "31+"
        buckets.setdefault(name, []).append(latency)
    return {k: statistics.median(v) * 1000 for k, v in sorted(buckets.items())}


def check_identical(runner: TranslationRunner, source_ids: list[list[int]], recorded: dict[int, bytes],
                    beam_size: int) -> tuple[int, int]:
    """Every served translation equals solo decoding (the same request alone)."""
    mismatches = 0
    for key, body in recorded.items():
        served = json.loads(body)["translation"]
        job = runner.job(source_ids[key], beam_size)
        solo = runner.detokenize(runner.translate([job])[0].tokens)
        mismatches += served != solo
    return len(recorded), mismatches


def translation_section(args: argparse.Namespace, server: ServerProcess, generator: LoadGenerator,
                        say: Callable[[str], None]) -> None:
    """Greedy and beam 5 at 1, 32, 64 clients (iteration-level) and at 64 with whole-request
    batching: two servers up side by side, the configurations run in interleaved rounds so that
    the machine's drift during the run falls on all of them alike."""
    sources = translation_texts(args.data_dir, "test_2016_flickr")
    random.Random(0).shuffle(sources)
    # solo decoding and the ceiling run where the server runs (CUDA when this onnxruntime has it)
    translator = load_runner(args.models / "translate-en-de" / "1", choose_providers())
    assert isinstance(translator, TranslationRunner)
    source_ids = [translator.tokenize(s) for s in sources]  # indexed like the requests' keys
    beams = (1, translator.decoding.default_beam_size)
    recorded: dict[int, dict[int, bytes]] = {b: {} for b in beams}
    whole_server = ServerProcess(args.models, translation_scheduler="request").wait_ready()
    slice_s = args.duration / args.rounds
    runs: dict[tuple[int, str, int], list[LoadResult]] = {}
    try:
        for b in beams:
            for _ in range(args.rounds):
                for name, port, clients in (("iteration", server.port, 1), ("iteration", server.port, 32),
                                            ("iteration", server.port, 64), ("whole-request", whole_server.port, 64),
                                            ("streamed", server.port, 64)):
                    record = recorded[b] if name == "iteration" else None
                    runs.setdefault((b, name, clients), []).append(
                        http_translate(port, sources, clients, slice_s, b, record, generator, name == "streamed"))
    finally:
        whole_server.stop()
    iteration = {b: {c: LoadResult.merged(runs[(b, "iteration", c)]) for c in (1, 32, 64)} for b in beams}
    whole = {b: LoadResult.merged(runs[(b, "whole-request", 64)]) for b in beams}
    streamed = {b: LoadResult.merged(runs[(b, "streamed", 64)]) for b in beams}
    say("## Translation over HTTP (POST /v1/translate, Multi30k test_2016_flickr sources)")
    say("| beam | scheduler | clients | requests/s | p50 ms | p99 ms | non-2xx |\n|---:|---|---:|---:|---:|---:|---:|")
    for b in beams:
        for name, r in [*[("iteration", r) for r in iteration[b].values()], ("whole-request", whole[b]),
                        ("iteration, streamed (SSE)", streamed[b])]:
            say(f"| {b} | {name} | {r.concurrency} | {r.rps:.2f} | {r.percentile(50) * 1000:.0f} | "
                f"{r.percentile(99) * 1000:.0f} | {sum(n for s, n in r.statuses.items() if s >= 300)} |")
    say("")
    for b in beams:
        res, base = iteration[b], max(iteration[b][1].rps, 1e-9)
        say(f"beam {b}: 32 clients / 1 client **{res[32].rps / base:.1f}x** (target >= 8); 64 / 1 "
            f"**{res[64].rps / base:.1f}x** (target >= 12); iteration-level / whole-request at 64 "
            f"**{res[64].rps / max(whole[b].rps, 1e-9):.2f}x** (target >= 1.3), p99 "
            f"{res[64].percentile(99) * 1000:.0f} vs {whole[b].percentile(99) * 1000:.0f} ms; streamed / "
            f"non-streamed at 64 **{streamed[b].rps / max(res[64].rps, 1e-9):.2f}x** (target >= 0.8)")
    for b in beams:
        tables = {name: length_buckets(source_ids, r) for name, r in (("iteration", iteration[b][64]),
                                                                       ("whole-request", whole[b]))}
        say(f"\np50 latency (ms) by source length (subwords) at 64 clients, beam {b}:")
        say("| scheduler | " + " | ".join(tables["iteration"]) + " |")
        say("|---|" + "---:|" * len(tables["iteration"]))
        for name, table in tables.items():
            say(f"| {name} | " + " | ".join(f"{v:.0f}" for v in table.values()) + " |")
    for b in beams:
        checked, mismatches = check_identical(translator, source_ids, recorded[b], b)
        say(f"\nbeam {b}: served vs solo decoding: {checked} distinct sentences checked, **{mismatches} differ**")
    ceiling_section(args, source_ids, recorded[1], say)


def ceiling_section(args: argparse.Namespace, source_ids: list[list[int]], greedy_bodies: dict[int, bytes],
                    say: Callable[[str], None]) -> None:
    """The best these ratios can be on this machine (loadtests/ceiling.py), from the cost curve
    of the model's own graphs and the output lengths the benchmark just served."""
    if choose_providers()[0] != "CPUExecutionProvider":
        say("\n## Ceiling\nskipped: its model has one CPU core per decode lane; on a GPU the lanes share one device")
        return
    single = load_runner(args.models / "translate-en-de" / "1", ["CPUExecutionProvider"], intra_op_threads=1)
    assert isinstance(single, TranslationRunner)
    source_len = int(statistics.median(len(ids) for ids in source_ids))
    lengths = [len(json.loads(body)["target_tokens"]) + 1 for body in greedy_bodies.values()]
    steps, encodes = ceiling.measure(single, source_len)
    settings = Settings()  # the server's, from the same environment
    lanes = min(os.cpu_count() or 1, settings.workers * settings.instances)
    say(f"\n## Ceiling on this machine (greedy; loadtests/ceiling.py; median source {source_len} subwords, "
        f"mean output {statistics.fmean(lengths):.1f} steps; {settings.workers} worker(s) x "
        f"{settings.instances} lanes on {os.cpu_count()} cores)")
    for line in ceiling.compute(steps, encodes, lengths, lanes=lanes).lines():
        say(f"- {line}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("--duration", type=float, default=8.0, help="seconds measured per phase (after 1 s warm-up)")
    p.add_argument("--rounds", type=int, default=3,
                   help="each configuration's time is split into this many interleaved rounds")
    p.add_argument("--skip-translation", action="store_true")
    p.add_argument("--client-processes", type=int, default=default_processes(),
                   help="load generator processes (default: 1 on up to 4 cores, else cores/4, at most 4)")
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "bench_service.md")
    p.add_argument("--baseline", type=Path, default=None,
                   help="another checkout (with its own .venv) to compare against in alternating rounds "
                        "(loadtests/baseline.py); only that comparison runs")
    args = p.parse_args(argv)

    lines: list[str] = ["# seqserve serving benchmark", "",
                        f"machine: {os.cpu_count()} CPUs; duration per phase {args.duration:.0f} s; load generator "
                        f"processes {args.client_processes}; server settings "
                        "from the environment: " + (", ".join(f"{k}={v}" for k, v in sorted(os.environ.items())
                                                              if k.startswith("SEQSERVE_") and k not in OWN_SETTINGS)
                                                       or "none (defaults)"), ""]

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    sentences = sentiment_texts(args.data_dir, "test")
    if args.baseline is not None:
        server = ServerProcess(args.models).wait_ready()
        generator = LoadGenerator(args.client_processes)
        try:
            sources = translation_texts(args.data_dir, "test_2016_flickr")
            baseline.compare(args.baseline.resolve(), server, generator, sentences, sources,
                             args.duration / args.rounds, args.rounds, say)
        finally:
            generator.close()
            server.stop()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
        print(f"\nwritten to {args.out}")
        return
    sentiment = load_runner(args.models / "sentiment" / "1", ["CPUExecutionProvider"])
    assert isinstance(sentiment, SentimentRunner)
    raw = RawSentiment(sentiment, sentences, [1, 8, 16, 32, 64, 128, 256])
    single_ms = raw.single_p50_ms()

    server = ServerProcess(args.models).wait_ready()
    say(f"## Start-up\nspawn to ready (imports, model load, checks, warm-up): {server.ready_after_s:.2f} s\n")
    generator = LoadGenerator(args.client_processes)
    try:
        # raw and served in alternating rounds (the served server idles during the raw sweeps), so
        # that the machine's drift during the run falls on both sides of the ratio alike
        one_runs, many_runs = [], []
        for _ in range(args.rounds):
            raw.sweep()
            one_runs.append(http_sentiment(server.port, sentences, 1, args.duration / args.rounds, generator))
            many_runs.append(http_sentiment(server.port, sentences, 64, args.duration / args.rounds, generator))
        one, many = LoadResult.merged(one_runs), LoadResult.merged(many_runs)
        best_size, best = raw.best()
        plain_size, plain = raw.best(sorted_by_length=False)
        say(f"## Sentiment: raw ONNX Runtime (no HTTP), SST-2 test sentences ({args.rounds} rounds)")
        say("| batch size | sentences/s (median) | min - max |\n|---:|---:|---:|")
        for size, value in raw.throughput().items():
            say(f"| {size} | {value:,.0f} | {min(raw.timings[size]):,.0f} - {max(raw.timings[size]):,.0f} |")
        say(f"\nbest: {best:,.0f} sentences/s at batch {best_size}; single request p50 {single_ms:.2f} ms.")
        say(f"For context only: batches cut in corpus order (no length sorting), best {plain:,.0f} sentences/s "
            f"at batch {plain_size}; the served 64-client figure is {many.items_per_s / plain:.2f} of that.\n")
        say("## Sentiment over HTTP (POST /v1/sentiment, one sentence per request)")
        say("| clients | sentences/s | p50 ms | p99 ms | non-2xx |\n|---:|---:|---:|---:|---:|")
        for r in (one, many):
            say(f"| {r.concurrency} | {r.items_per_s:,.0f} | {r.percentile(50) * 1000:.2f} | "
                f"{r.percentile(99) * 1000:.2f} | {sum(n for s, n in r.statuses.items() if s >= 300)} |")
        say(f"\n64 clients / raw best: **{many.items_per_s / best:.2f}** (target >= 0.8); per round: "
            + ", ".join(f"{r.items_per_s / best:.2f}" for r in many_runs))
        say(f"p50 at 1 client - raw single request: **{one.percentile(50) * 1000 - single_ms:.2f} ms** "
            f"(target <= 3 ms)\n")

        if not args.skip_translation:
            translation_section(args, server, generator, say)
    finally:
        generator.close()
        server.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
