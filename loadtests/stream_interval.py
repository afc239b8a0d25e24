"""Streamed against non-streamed throughput at 64 clients, for several STREAM_INTERVAL_MS:

    python -m loadtests.stream_interval [--intervals 0 20 50] [--beam 1] [--rounds 4] [--duration 5]

One server per interval, all up at once; each round runs every (interval, streamed or not) for
``duration`` seconds in turn, so the machine's drift falls on all alike. Prints requests/s
(median of rounds) and the streamed / non-streamed ratio per interval: the trade-off behind the
default (README, STREAM_INTERVAL_MS): a stream's hand-overs wake it on the event loop and each
costs a write, which on a small machine competes with the decode threads for the GIL.
"""

from __future__ import annotations

import argparse
import random
import statistics
from pathlib import Path

from loadtests.bench_service import http_translate
from loadtests.inputs import DATA_DIR, translation_texts
from loadtests.load_generator import LoadGenerator
from loadtests.server import ROOT, ServerProcess


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("--intervals", type=float, nargs="+", default=[0, 20, 50], help="STREAM_INTERVAL_MS values")
    p.add_argument("--beam", type=int, default=1)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per run (after 1 s warm-up)")
    args = p.parse_args(argv)
    sources = translation_texts(args.data_dir, "test_2016_flickr")
    random.Random(0).shuffle(sources)
    servers = {ms: ServerProcess(args.models, stream_interval_ms=f"{ms:g}") for ms in args.intervals}
    rps: dict[tuple[float, bool], list[float]] = {}
    try:
        for server in servers.values():
            server.wait_ready()
        generator = LoadGenerator()
        for r in range(args.rounds):
            for ms, server in servers.items():
                for stream in (False, True):
                    result = http_translate(server.port, sources, args.clients, args.duration, args.beam,
                                            generator=generator, stream=stream)
                    rps.setdefault((ms, stream), []).append(result.rps)
                    print(f"round {r + 1}: interval {ms:g} ms, {'streamed' if stream else 'non-streamed'}: "
                          f"{result.rps:.1f} requests/s", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    print("\n| STREAM_INTERVAL_MS | non-streamed req/s | streamed req/s | streamed / non-streamed |\n"
          "|---:|---:|---:|---:|")
    for ms in args.intervals:
        plain, streamed = statistics.median(rps[(ms, False)]), statistics.median(rps[(ms, True)])
        print(f"| {ms:g} | {plain:.1f} | {streamed:.1f} | **{streamed / plain:.2f}** |")
    print(f"(beam {args.beam}, {args.clients} clients, medians of {args.rounds} rounds of {args.duration:g} s)")


if __name__ == "__main__":
    main()
