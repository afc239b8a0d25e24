"""This checkout against a baseline checkout, measured in alternating rounds on one machine.

    make bench BASELINE=../seqserve-before      (python -m loadtests.bench_service --baseline DIR)

The baseline is another checkout of seqserve with its own .venv (``make .venv/.runtime`` there)
and its own models/. Both servers run with their defaults (the same SEQSERVE_* environment). Each
round starts a fresh server of each side (which of them first alternates), warms both alike, then
runs every phase on both, which of them first alternating too, so that the machine's drift falls
on both alike; the ratio printed is of the two medians over rounds. A fresh pair a round: a server
process keeps a speed of its own for its life on the 2-core VM (two started alike from the same
code differed by 3-5 % over ten alternating rounds; docs/benchmarks.md, stop 52), and with one
process a side the ratio was as much that luck as the code (2.28-2.55x at 64 clients in six runs).

Around each sentiment run it reads the server's CPU (loadtests/cpu_share.py ``measure``) and prints
it per answered request: this checkout's split into the model and serving, as `make bench` splits
it, so that one run gives both of issue 15's lines (the ratio and the serving cost), and the
baseline's whole (a checkout that counts no model CPU).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from loadtests import cpu_share  # a module: cpu_share imports bench_service, which imports this one
from loadtests.http_client import LoadResult, encode_post
from loadtests.load_generator import LoadGenerator
from loadtests.server import AS_DEPLOYED, ServerProcess, server_rounds


@dataclass
class Phase:
    name: str
    path: str
    bodies: Sequence[Mapping[str, object]]
    clients: int
    per_item: bool  # sentences/s (sentiment) rather than requests/s


def phases(sentences: list[str], sources: list[str]) -> list[Phase]:
    sentiment = [{"text": s} for s in sentences]
    greedy = [{"text": s, "beam_size": 1} for s in sources]
    beam = [{"text": s, "beam_size": 5} for s in sources]
    return [Phase("sentiment, 1 client", "/v1/sentiment", sentiment, 1, True),
            Phase("sentiment, 16 clients", "/v1/sentiment", sentiment, 16, True),
            Phase("sentiment, 64 clients", "/v1/sentiment", sentiment, 64, True),
            Phase("translation greedy, 64 clients", "/v1/translate", greedy, 64, False),
            Phase("translation beam 5, 64 clients", "/v1/translate", beam, 64, False)]


def check_baseline(checkout: Path) -> None:
    for needed in (checkout / ".venv" / "bin" / "python", checkout / "models"):
        if not needed.exists():
            raise SystemExit(f"baseline {checkout}: {needed} is missing (run `make .venv/.runtime` there)")


WARMUP_S = 1.0  # each fresh server's, on WARMUP_PHASE, before a round's phases
WARMUP_PHASE = "sentiment, 16 clients"


def compare(checkout: Path, start_ours: Callable[[], ServerProcess], generator: LoadGenerator,
            sentences: list[str], sources: list[str], seconds_per_round: float, rounds: int,
            say: Callable[[str], None]) -> None:
    """Every phase on both sides, ``rounds`` times, a fresh server of each side a round (``start_ours``
    starts this checkout's and waits until it is ready); prints a table of medians and ratios."""
    check_baseline(checkout)

    def start_theirs() -> ServerProcess:
        return ServerProcess.ready(checkout / "models", checkout=checkout, settings=AS_DEPLOYED)

    starts = {"this": start_ours, "baseline": start_theirs}
    all_phases = phases(sentences, sources)
    requests = {phase.name: [encode_post(phase.path, dict(body)) for body in phase.bodies] for phase in all_phases}
    warmup = next(phase for phase in all_phases if phase.name == WARMUP_PHASE)
    rates: dict[tuple[str, str], list[float]] = {}
    p99: dict[tuple[str, str], list[float]] = {}
    failed: dict[tuple[str, str], int] = {}
    shares: dict[tuple[str, str], list[cpu_share.Share]] = {}
    with server_rounds(starts, rounds) as each_round:  # a fresh server of each side a round
        for order, servers, _ in each_round:
            for side in order:
                generator.run(servers[side].port, requests[warmup.name], warmup.clients, WARMUP_S)
            for phase in all_phases:
                for side in order:
                    key = (phase.name, side)

                    def run(seconds: float, port: int = servers[side].port, phase: Phase = phase) -> LoadResult:
                        return generator.run(port, requests[phase.name], phase.clients, seconds)[0]

                    if phase.path == "/v1/sentiment":  # the CPU it cost each server, read around the run
                        shares.setdefault(key, []).append(cpu_share.measure(servers[side], run, seconds_per_round))
                        result = shares[key][-1].result
                    else:
                        result = run(seconds_per_round)
                    rates.setdefault(key, []).append(result.items_per_s if phase.per_item else result.rps)
                    p99.setdefault(key, []).append(result.percentile(99) * 1000)
                    failed[key] = failed.get(key, 0) + sum(n for s, n in result.statuses.items() if s >= 300)
    say(f"## This checkout vs the baseline at {checkout} ({rounds} rounds, a fresh server of each side a round, "
        f"{seconds_per_round:.1f} s per phase and side)")
    say("| phase | this (median) | baseline (median) | this / baseline | p99 ms this / baseline | non-2xx |")
    say("|---|---:|---:|---:|---:|---:|")
    for phase in phases(sentences, sources):
        mine, base = (statistics.median(rates[(phase.name, side)]) for side in ("this", "baseline"))
        unit = "sentences/s" if phase.per_item else "requests/s"
        say(f"| {phase.name} | {mine:,.1f} {unit} | {base:,.1f} | **{mine / max(base, 1e-9):.2f}x** | "
            f"{statistics.median(p99[(phase.name, 'this')]):.0f} / "
            f"{statistics.median(p99[(phase.name, 'baseline')]):.0f} | "
            f"{failed[(phase.name, 'this')]} / {failed[(phase.name, 'baseline')]} |")
    say("")
    say_cpu(shares, say)


def say_cpu(shares: Mapping[tuple[str, str], Sequence[cpu_share.Share]], say: Callable[[str], None]) -> None:
    """The sentiment phases' server CPU per answered request, from the runs above: this checkout's
    split into the model (inside ONNX Runtime's runs, seqserve_model_cpu_seconds_total) and serving
    (the rest: issue 15's serving cost, measured on as many fresh servers as rounds), and the
    baseline's whole (it counts no model CPU). Each a median over the rounds."""
    say("## Sentiment: server CPU per answered request in the same runs (us; medians over the rounds)")
    say("server = all the server's threads (/proc); model = inside ONNX Runtime's runs "
        "(seqserve_model_cpu_seconds_total); serving = server - model, the round's own\n")
    say("| phase | this: server | model | serving | of which event loop | mean batch | padding | baseline: server |")
    say("|---|---:|---:|---:|---:|---:|---:|---:|")
    for (name, side), ours in shares.items():
        if side != "this":
            continue
        batches = sum((share.batches for share in ours), cpu_share.Batches())
        theirs = statistics.median(share.server_us for share in shares[(name, "baseline")])
        say(f"| {name} | {statistics.median(s.server_us for s in ours):.0f} | "
            f"{statistics.median(s.model_us for s in ours):.0f} | "
            f"**{statistics.median(s.server_us - s.model_us for s in ours):.0f}** | "
            f"{statistics.median(s.loop_us for s in ours):.0f} | {batches.mean_size:.1f} | {batches.padding:.0%} | "
            f"{theirs:.0f} |")
    say("")
