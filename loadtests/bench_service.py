"""Serving benchmark: the served model against its raw ONNX Runtime limit, in one run.

    python -m loadtests.bench_service [--duration 8] [--out reports/bench_service.md]
    python -m loadtests.bench_service --baseline ../other-checkout   (this vs that, loadtests/baseline.py)

Prints (and writes as markdown):
  - raw ONNX Runtime throughput of the sentiment model at a range of batch sizes (no HTTP) on
    the SST-2 test sentences, fp32 and INT8 (the graphs `make int8` derives): the two limits;
  - start-up to ready of `python -m service`;
  - sentiment over HTTP at 1, 16 and 64 clients (in the precision the server chose; INT8 on a
    CPU by default): sentences/s as a fraction of the INT8 limit, p50/p99; and server CPU per
    request (all threads, loadtests/cpu_share.py) split into the model (the CPU of ONNX Runtime's
    runs on the batches the server formed, from its seqserve_model_cpu_seconds_total) and serving
    (the rest), with the batches' mean size and padded share;
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

import numpy as np

from loadtests import api_quality, baseline, ceiling, cpu_share
from loadtests.http_client import LoadResult, encode_post
from loadtests.inputs import DATA_DIR, sentiment_texts, translation_texts
from loadtests.load_generator import LoadGenerator, default_processes
from loadtests.server import AS_DEPLOYED, OWN_SETTINGS, ROOT, ServerProcess, served_models
from service.onnx_session import CPU, Precision, StaleGraphError, choose_providers, graph_path, provider_name
from service.registry import instances_for
from service.runners import SentimentRunner, TranslationRunner, load_runner
from service.sentences import sentences, translated_parts
from service.settings import Settings

# rounds of the comparison with a baseline, each with a fresh server of each side: the ratio is a
# median over as many server processes (loadtests/baseline.py says why)
BASELINE_ROUNDS = 6


# --- raw ONNX Runtime -----------------------------------------------------------------------
class RawSentiment:
    """The model alone in ONNX Runtime with ORT's own defaults (all cores, spinning threads,
    memory arena): the strictest limit to hold the served figure against. Batches are cut from
    the length-sorted sentences: the raw limit at its best, stricter than what the server sees."""

    def __init__(self, runner: SentimentRunner, sentences: list[str], sizes: list[int]) -> None:
        import onnxruntime as ort

        path = graph_path(runner.model_dir, runner.card.graphs["model"], runner.precision)
        runner.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
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


class ServedCpu:
    """Server CPU over served sentiment runs, each measured as loadtests/cpu_share.py measures one
    (``measure``): all threads and the event loop (from /proc), the model's share
    (seqserve_model_cpu_seconds_total: the CPU of the threads calling ONNX Runtime, inside its
    runs, on the batches the server formed), and those batches (their sizes and padding)."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.shares: list[cpu_share.Share] = []

    def run(self, sentences: list[str], clients: int, duration: float, generator: LoadGenerator) -> LoadResult:
        share = cpu_share.measure(self.server, lambda seconds: http_sentiment(
            self.server.port, sentences, clients, seconds, generator), duration)
        self.shares.append(share)
        return share.result

    @property
    def batches(self) -> cpu_share.Batches:
        return sum((share.batches for share in self.shares), cpu_share.Batches())

    def per_request_us(self) -> tuple[float, float, float]:
        """(all threads, model, event loop) CPU microseconds per answered request, over all the
        runs: each run's figure weighted by the requests it answered."""
        answered = max(sum(share.answered for share in self.shares), 1.0)
        server, model, loop = (sum(getattr(share, figure) * share.answered for share in self.shares) / answered
                               for figure in ("server_us", "model_us", "loop_us"))
        return server, model, loop


def raw_runners(models: Path, sentences: list[str], sizes: list[int]) -> dict[str, RawSentiment]:
    """fp32 and, where `make int8` derived it, INT8, each on ONNX Runtime's defaults."""
    raws = {}
    for precision in ("fp32", "int8"):
        try:
            runner = load_runner(models / "sentiment" / "1", ["CPUExecutionProvider"], precision=precision)
        except StaleGraphError:
            continue
        except (OSError, RuntimeError) as exc:
            if precision == "fp32":
                raise
            print(f"no INT8 limit: {exc}")
            continue
        assert isinstance(runner, SentimentRunner)
        raws[precision] = RawSentiment(runner, sentences, sizes)
    return raws


def sentiment_section(args: argparse.Namespace, server: ServerProcess, generator: LoadGenerator,
                      say: Callable[[str], None]) -> None:
    """Raw fp32 and INT8 limits, then the server at 1/16/64 clients with its CPU per request split
    into model and serving. Raw sweeps and served runs alternate in rounds (the server idles
    during the sweeps), so that the machine's drift falls on both sides of the ratios alike."""
    sentences = sentiment_texts(args.data_dir, "test")
    raws = raw_runners(args.models, sentences, [1, 8, 16, 32, 64, 128, 256])
    precision: Precision = served_models(server.url)["sentiment"]["precision"]
    clients = (1, 16, 64)
    cpu = {c: ServedCpu(server) for c in clients}
    runs: dict[int, list[LoadResult]] = {c: [] for c in clients}
    for _ in range(args.rounds):
        for raw in raws.values():
            raw.sweep()
        for c in clients:
            runs[c].append(cpu[c].run(sentences, c, args.duration / args.rounds, generator))
    results = {c: LoadResult.merged(runs[c]) for c in clients}
    limits = {p: raw.best() for p, raw in raws.items()}
    reference = "int8" if "int8" in limits else "fp32"
    limit = limits[reference][1]

    say(f"## Sentiment: raw ONNX Runtime (no HTTP), SST-2 test sentences ({args.rounds} rounds)")
    say("ONNX Runtime's defaults (all cores, spinning threads), batches cut from the length-sorted "
        "sentences: the strictest limit. Median sentences/s (min - max):")
    say("| batch size | " + " | ".join(raws) + " |\n|---:|" + "---:|" * len(raws))
    for size in raws["fp32"].timings:
        say(f"| {size} | " + " | ".join(f"{raw.throughput()[size]:,.0f} ({min(raw.timings[size]):,.0f} - "
                                        f"{max(raw.timings[size]):,.0f})" for raw in raws.values()) + " |")
    say("\nlimits: " + "; ".join(f"**{p} {best:,.0f} sentences/s** at batch {size}"
                                  for p, (size, best) in limits.items())
        + (f"; INT8 / fp32 {limits['int8'][1] / limits['fp32'][1]:.2f}x" if "int8" in limits else
           " (no INT8 graphs: `make int8`; fractions below are of the fp32 limit)"))
    mine = raws.get(precision, raws["fp32"])
    plain_size, plain = mine.best(sorted_by_length=False)
    say(f"For context only ({precision}): batches cut in corpus order (no length sorting), best {plain:,.0f} "
        f"sentences/s at batch {plain_size}.\n")

    say(f"## Sentiment over HTTP (POST /v1/sentiment, one sentence per request; served in {precision})")
    say(f"| clients | sentences/s | of the {reference} limit | p50 ms | p99 ms | non-2xx |\n"
        "|---:|---:|---:|---:|---:|---:|")
    for c, r in results.items():
        say(f"| {c} | {r.items_per_s:,.0f} | **{r.items_per_s / limit:.2f}** | {r.percentile(50) * 1000:.2f} | "
            f"{r.percentile(99) * 1000:.2f} | {sum(n for s, n in r.statuses.items() if s >= 300)} |")
    single_ms = mine.single_p50_ms()
    say(f"\n64 clients / {reference} limit per round: " + ", ".join(
        f"{r.items_per_s / limit:.2f}" for r in runs[64]) + f"; p50 at 1 client - raw single request "
        f"({precision}, {single_ms:.2f} ms): **{results[1].percentile(50) * 1000 - single_ms:.2f} ms**\n")

    threads = Settings().ort_intra_op_threads
    say("## Server CPU per request (sentiment, one sentence each; microseconds of CPU per answered request)")
    say("server = all its threads (/proc, as loadtests/cpu_share.py reads them); model = inside ONNX Runtime's runs "
        "on the batches the server formed (seqserve_model_cpu_seconds_total); serving = server - model; "
        "padding = the padded share of a batch's positions (rows x its longest; the mean over its batches), "
        "which the model runs like subwords"
        + ("" if threads == 1 else f" (ORT_INTRA_OP_THREADS={threads}: ONNX Runtime's pool threads count as "
                                   "serving here)") + "\n")
    say("| clients | mean batch | padding | server | model | serving | of which event loop |\n"
        "|---:|---:|---:|---:|---:|---:|---:|")
    for c in clients:
        total, model_us, loop = cpu[c].per_request_us()
        say(f"| {c} | {cpu[c].batches.mean_size:.1f} | {cpu[c].batches.padding:.0%} | {total:.0f} | {model_us:.0f} | "
            f"**{total - model_us:.0f}** | {loop:.0f} |")
    say("")


def sentiment_requests(sentences: list[str]) -> list[bytes]:
    """POST /v1/sentiment requests of one sentence each, as a client sends them."""
    return [encode_post("/v1/sentiment", {"text": s}) for s in sentences]


def http_sentiment(port: int, sentences: list[str], clients: int, duration: float,
                   generator: LoadGenerator | None = None) -> LoadResult:
    return (generator or LoadGenerator()).run(port, sentiment_requests(sentences), clients, duration)[0]


def http_translate(port: int, sources: list[str], clients: int, duration: float, beam_size: int,
                   record: dict[int, bytes] | None = None, generator: LoadGenerator | None = None,
                   stream: bool = False) -> LoadResult:
    extra = {"stream": True} if stream else {}
    requests = [encode_post("/v1/translate", {"text": s, "beam_size": beam_size, **extra}) for s in sources]
    result, bodies = (generator or LoadGenerator()).run(port, requests, clients, duration, keyed=True)
    if record is not None:
        record.update(bodies)
    return result


def length_buckets(source_ids: list[list[int]], result: LoadResult, q: float = 50) -> dict[str, float]:
    """The q-th percentile of latency (ms) by source length (subwords, without </s>); needs
    result.tagged latencies."""
    buckets: dict[str, list[float]] = {}
    for key, latency in result.tagged:
        n = len(source_ids[key]) - 1
        name = "1-10" if n <= 10 else "11-20" if n <= 20 else "21-30" if n <= 30 else "31+"
        buckets.setdefault(name, []).append(latency)
    return {k: float(np.percentile(v, q)) * 1000 for k, v in sorted(buckets.items())}


def check_identical(runner: TranslationRunner, sources: list[str], recorded: dict[int, bytes],
                    beam_size: int) -> tuple[int, int]:
    """Every served translation equals solo decoding (the same request alone): its target
    subwords against those of each sentence the server read in its text, decoded alone. (The
    server translates a text's sentences one by one and leaves what reads no words as typed: "#
    8 for Iowa State ..." is "#" kept and "8 for Iowa State ..." translated, service/sentences.py.)"""
    mismatches = 0
    for key, body in recorded.items():
        served = json.loads(body)["target_tokens"]
        cores = translated_parts(sources[key], sentences(sources[key])).cores
        solo = [token for core in cores
                for token in runner.translate([runner.job(runner.tokenize(core), beam_size)])[0].tokens]
        mismatches += served != runner.target_tokenizer.pieces(solo)
    return len(recorded), mismatches


def translation_section(args: argparse.Namespace, server: ServerProcess, generator: LoadGenerator,
                        say: Callable[[str], None]) -> None:
    """Greedy and beam 5 at 1, 32, 64 clients (iteration-level) and at 64 with whole-request
    batching: two servers up side by side, the configurations run in interleaved rounds so that
    the machine's drift during the run falls on all of them alike."""
    sources = translation_texts(args.data_dir, "test_2016_flickr")
    random.Random(0).shuffle(sources)
    # solo decoding and the ceiling run where and as the server runs (CUDA when this onnxruntime
    # has it; the precision the server chose)
    precision: Precision = served_models(server.url)["translate-en-de"]["precision"]
    translator = load_runner(args.models / "translate-en-de" / "1", choose_providers(), precision=precision)
    assert isinstance(translator, TranslationRunner)
    source_ids = [translator.tokenize(s) for s in sources]  # indexed like the requests' keys
    beams = (1, translator.decoding.default_beam_size)
    recorded: dict[int, dict[int, bytes]] = {b: {} for b in beams}
    whole_server = ServerProcess.ready(args.models, translation_scheduler="request", precision=precision,
                                       settings=AS_DEPLOYED)
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
    say(f"## Translation over HTTP (POST /v1/translate, Multi30k test_2016_flickr sources; served in {precision})")
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
        checked, mismatches = check_identical(translator, sources, recorded[b], b)
        say(f"\nbeam {b}: served vs solo decoding ({precision}): {checked} distinct texts checked, "
            f"**{mismatches} differ**")
    ceiling_section(args, source_ids, recorded[1], precision, say)


def ceiling_section(args: argparse.Namespace, source_ids: list[list[int]], greedy_bodies: dict[int, bytes],
                    precision: Precision, say: Callable[[str], None]) -> None:
    """The best these ratios can be on this machine (loadtests/ceiling.py), from the cost curve
    of the model's own graphs and the output lengths the benchmark just served."""
    if provider_name(choose_providers()[0]) != CPU:
        say("\n## Ceiling\nskipped: its model has one CPU core per decode lane; on a GPU the lanes share one device")
        return
    single = load_runner(args.models / "translate-en-de" / "1", ["CPUExecutionProvider"], intra_op_threads=1,
                         precision=precision)
    assert isinstance(single, TranslationRunner)
    source_len = int(statistics.median(len(ids) for ids in source_ids))
    lengths = [len(json.loads(body)["target_tokens"]) + 1 for body in greedy_bodies.values()]
    steps, encodes = ceiling.measure(single, source_len)
    settings = Settings()  # the server's, from the same environment
    per_worker = instances_for(settings)
    lanes = min(os.cpu_count() or 1, settings.workers * per_worker)
    say(f"\n## Ceiling on this machine (greedy; loadtests/ceiling.py; median source {source_len} subwords, "
        f"mean output {statistics.fmean(lengths):.1f} steps; {settings.workers} worker(s) x "
        f"{per_worker} lanes on {os.cpu_count()} cores; {precision})")
    for line in ceiling.compute(steps, encodes, lengths, lanes=lanes).lines():
        say(f"- {line}")


def quality_section(args: argparse.Namespace, say: Callable[[str], None]) -> None:
    """SST-2 test and Multi30k test_2016_flickr through a real server in each precision
    (loadtests/api_quality.py), beside the card's fp32 figures."""
    say("## Quality through the API (lists of 16 texts, 4 requests at a time; loadtests/api_quality.py)")
    say("| precision | SST-2 test accuracy | test_2016_flickr BLEU (lc 13a, beam 5) |\n|---|---:|---:|")
    for precision in ("fp32", "int8"):
        try:
            result = api_quality.measure(args.models, precision, args.data_dir)
        except RuntimeError as exc:  # the server refused to start: no INT8 graphs
            say(f"| {precision} | not served: {str(exc).splitlines()[0]} | |")
            continue
        say(f"| {precision} | {result['sst2_test_accuracy']:.4f} | {result['test_2016_flickr_bleu_lc_beam5']:.2f} |")
    say("")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("--duration", type=float, default=8.0, help="seconds measured per phase (after 1 s warm-up)")
    p.add_argument("--rounds", type=int, default=None,
                   help="each configuration's time is split into this many interleaved rounds (default 3; "
                        f"with --baseline {BASELINE_ROUNDS}, a fresh server of each side a round)")
    p.add_argument("--skip-translation", action="store_true")
    p.add_argument("--skip-quality", action="store_true", help="leave out quality through the API (fp32 vs INT8)")
    p.add_argument("--client-processes", type=int, default=default_processes(),
                   help="load generator processes (default: 1 on up to 4 cores, else cores/4, at most 4)")
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "bench_service.md")
    p.add_argument("--baseline", type=Path, default=None,
                   help="another checkout (with its own .venv) to compare against in alternating rounds "
                        "(loadtests/baseline.py); only that comparison runs")
    args = p.parse_args(argv)
    if args.rounds is None:
        args.rounds = BASELINE_ROUNDS if args.baseline is not None else 3
    elif args.rounds < 1:
        p.error("--rounds must be at least 1")

    lines: list[str] = ["# seqserve serving benchmark", "",
                        f"machine: {os.cpu_count()} CPUs; duration per phase {args.duration:.0f} s; load generator "
                        f"processes {args.client_processes}; server settings "
                        "from the environment: " + (", ".join(f"{k}={v}" for k, v in sorted(os.environ.items())
                                                              if k.startswith("SEQSERVE_") and k not in OWN_SETTINGS)
                                                       or "none (defaults)") + "; access log on, as deployed", ""]

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    if args.baseline is not None:
        generator = LoadGenerator(args.client_processes)
        try:
            sources = translation_texts(args.data_dir, "test_2016_flickr")
            baseline.compare(args.baseline.resolve(), lambda: ServerProcess.ready(args.models, settings=AS_DEPLOYED),
                             generator, sentiment_texts(args.data_dir, "test"), sources, args.duration / args.rounds,
                             args.rounds, say)
        finally:
            generator.close()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
        print(f"\nwritten to {args.out}")
        return
    server = ServerProcess.ready(args.models, settings=AS_DEPLOYED)
    say(f"## Start-up\nspawn to ready (imports, model load, checks, warm-up): {server.ready_after_s:.2f} s\n")
    generator = LoadGenerator(args.client_processes)
    try:
        sentiment_section(args, server, generator, say)
        if not args.skip_translation:
            translation_section(args, server, generator, say)
    finally:
        generator.close()
        server.stop()
    if not args.skip_quality:
        quality_section(args, say)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
