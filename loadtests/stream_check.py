"""Streaming checks against a real server on loopback (starts its own):

    python -m loadtests.stream_check [--latency 20] [--parity 1000] [--beams 1 5]

- latency: Multi30k val sentences of 15+ words, greedy, one at a time: time to the first event
  against the time of the whole stream (medians; the target is first < half of whole);
- parity: that many val sentences, at each beam size: the streamed result equals the
  non-streamed answer, and (greedy) the deltas concatenate to the translation. Requests run
  from a few client threads at once, so streams share decode batches as they would in service.
"""

from __future__ import annotations

import argparse
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from loadtests.inputs import DATA_DIR, translation_texts
from loadtests.server import ROOT, ServerProcess
from loadtests.sse_client import post_stream


def latency(url: str, sentences: list[str], count: int) -> None:
    long = [s for s in sentences if len(s.split()) >= 15][:count]
    firsts, wholes = [], []
    with httpx.Client() as client:
        post_stream(client, f"{url}/v1/translate", {"text": long[0], "stream": True, "beam_size": 1})  # warm
        print(f"{'words':>5} {'tokens':>6} {'first ms':>9} {'whole ms':>9}")
        for text in long:
            s = post_stream(client, f"{url}/v1/translate", {"text": text, "stream": True, "beam_size": 1})
            assert s.status == 200 and s.events[-1].event == "result", s.body
            firsts.append(s.first_event_s)
            wholes.append(s.total_s)
            print(f"{len(text.split()):>5} {len(s.events[-1].data['target_tokens']):>6} "
                  f"{s.first_event_s * 1000:>9.1f} {s.total_s * 1000:>9.1f}")
    first, whole = statistics.median(firsts), statistics.median(wholes)
    print(f"latency: {len(long)} val sentences of 15+ words, beam 1, one at a time: median time to first event "
          f"{first * 1000:.1f} ms, median whole stream {whole * 1000:.1f} ms, ratio {first / whole:.2f} "
          f"(target < 0.5)")


# Requests decoded in different batches can differ in the last float bits (ONNX Runtime's kernels
# sum in a batch-size-dependent order): two non-streamed calls of one sentence under load differ
# the same way (measured: score up to 5e-7, an attention weight by one unit of the 5th decimal).
_SCORE_TOL, _ATTENTION_TOL = 1e-5, 2e-5


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """The same translation, tokens, model; score and attention equal up to batch float noise."""
    keys = ("translation", "source_tokens", "target_tokens", "model", "version")
    if any(a[k] != b.get(k) for k in keys) or abs(a["score"] - b["score"]) > _SCORE_TOL:
        return False
    rows_a, rows_b = a["attention"], b["attention"]
    return len(rows_a) == len(rows_b) and all(
        len(x) == len(y) and max((abs(p - q) for p, q in zip(x, y, strict=True)), default=0.0) <= _ATTENTION_TOL
        for x, y in zip(rows_a, rows_b, strict=True))


def _one(client: httpx.Client, url: str, text: str, beam_size: int) -> tuple[bool, bool, bool]:
    """(streamed result == non-streamed answer up to float noise, exactly, deltas concatenate)."""
    body = {"text": text, "beam_size": beam_size, "return_attention": True}
    plain = client.post(f"{url}/v1/translate", json=body, timeout=60).json()
    s = post_stream(client, f"{url}/v1/translate", {**body, "stream": True})
    final = s.events[-1]
    if final.event != "result":
        return False, False, False
    joined = beam_size > 1 or "".join(e.data["text"] for e in s.events[:-1]) == final.data["translation"]
    return _same(plain, final.data), final.data == plain, joined


def parity(url: str, sentences: list[str], count: int, beams: list[int], threads: int) -> None:
    texts = sentences[:count]
    with httpx.Client(limits=httpx.Limits(max_connections=threads)) as client, ThreadPoolExecutor(threads) as pool:
        for beam in beams:
            results = list(pool.map(lambda t, b=beam: _one(client, url, t, b), texts))
            differ = sum(not same for same, _, _ in results)
            exact = sum(exactly for _, exactly, _ in results)
            broken = sum(not joined for _, _, joined in results)
            print(f"parity: {len(texts)} val sentences, beam {beam}: streamed result differs from the non-streamed "
                  f"one: {differ} (translation, tokens; score within {_SCORE_TOL:g}, attention within "
                  f"{_ATTENTION_TOL:g}; bit-identical: {exact}); deltas not concatenating to the translation: "
                  f"{broken if beam == 1 else 'n/a (beam)'}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("--latency", type=int, default=20, help="sentences for the latency check (0 = skip)")
    p.add_argument("--parity", type=int, default=0, help="sentences for the parity check (0 = skip)")
    p.add_argument("--beams", type=int, nargs="+", default=[1, 5])
    p.add_argument("--threads", type=int, default=8, help="client threads for the parity check")
    args = p.parse_args(argv)
    sentences = translation_texts(args.data_dir, "val")
    server = ServerProcess.ready(args.models)
    try:
        if args.latency:
            latency(server.url, sentences, args.latency)
        if args.parity:
            parity(server.url, sentences, args.parity, args.beams, args.threads)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
