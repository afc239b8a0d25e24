"""Quality through the API: the held-out test sets sent to a real server, scored like the cards.

    python -m loadtests.api_quality [--precision fp32 int8] [--beam 5]
    python -m loadtests.api_quality --batch-mates [--precision fp32 int8] [--split dev]
    python -m loadtests.api_quality --scores [--beam 5]
    python -m loadtests.api_quality --emoji [--precision fp32] [--split dev]

For each precision a server is started on the model repository with SEQSERVE_PRECISION set, and
every SST-2 test sentence and every Multi30k test_2016_flickr source goes through POST
/v1/sentiment and /v1/translate (lists of 16 texts, 4 at a time: export/evaluate.py's
api_translator, so answers come out of batches formed as in service). Prints accuracy and
lowercased 13a BLEU (the cards' ``sst2_test_accuracy`` and ``test_2016_flickr_bleu_lc_beam5``), so
that served quality can be held against the figures measured on the runners.

``--batch-mates``: how much a sentiment answer depends on what it is batched with. Every SST-2
sentence of ``--split`` is scored alone (one request at a time: a batch of one), then in lists of
64 in the file's order and in a shuffled order; prints, for each arrangement against alone, the
largest difference in a probability, how many labels differ, and the accuracy. INT8's dynamic
quantization takes its activation scales from the whole batch tensor, so its answers move with
their batch-mates (other clients' requests among them); fp32's move by rounding only.

``--scores``: the spread of the translator's ``score`` (length-normalised log-probability) on
the Multi30k val and test_2016_flickr sources, to judge a threshold on it against out-of-domain
text (docs/models.md, *What the translator knows*).

``--emoji``: SST-2 accuracy of ``--split`` with emoji after every sentence (" 🔥🔥🔥", " 👍👍", ...),
against the sentences as they are: the sentiment model never saw an emoji (docs/models.md,
*Tokenisation*); then Multi30k val BLEU with the same emoji inside every source, after its middle
word (the translator keeps emoji at a sentence's edges as typed; Multi30k has none either).
"""

from __future__ import annotations

import argparse
import random
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from export.data import read_multi30k_pairs, read_sst2
from export.evaluate import api_translator
from loadtests.inputs import DATA_DIR
from loadtests.server import ROOT, ServerProcess, served_models


def api_sentiment(url: str, texts: list[str], batch_size: int = 16, concurrency: int = 4) -> list[dict[str, Any]]:
    """Each text's result through POST /v1/sentiment, in order (as api_translator sends translations)."""
    with httpx.Client(base_url=url, timeout=300) as client:
        def one_batch(batch: list[str]) -> list[dict[str, Any]]:
            r = client.post("/v1/sentiment", json={"texts": batch})
            r.raise_for_status()
            results: list[dict[str, Any]] = r.json()["results"]
            return results

        chunks = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
        with ThreadPoolExecutor(concurrency) as pool:
            return [label for part in pool.map(one_batch, chunks) for label in part]


def measure(models: Path, precision: str, data_dir: Path = DATA_DIR, beam: int = 5,
            limit: int | None = None) -> dict[str, Any]:
    """Served accuracy and BLEU with SEQSERVE_PRECISION=``precision``, and what the server says it
    served. ``limit``: only the first so many sentences of each test set (for a quick check)."""
    import sacrebleu

    sst = read_sst2(data_dir, "test")[:limit]
    pairs = read_multi30k_pairs(data_dir, "test_2016_flickr")[:limit]
    server = ServerProcess.ready(models, precision=precision)
    try:
        served = {name: model["precision"] for name, model in served_models(server.url).items()}
        labels = [res["label"] for res in api_sentiment(server.url, [r.text for r in sst])]
        hyps = api_translator(server.url)([s for s, _ in pairs], beam)
    finally:
        server.stop()
    names = ["negative", "positive"]
    accuracy = sum(names.index(label) == r.label for label, r in zip(labels, sst, strict=True)) / len(sst)
    bleu = sacrebleu.corpus_bleu([h or "" for h in hyps], [[t for _, t in pairs]], tokenize="13a",
                                 lowercase=True).score
    return {"served": served, "sst2_test_accuracy": accuracy, f"test_2016_flickr_bleu_lc_beam{beam}": bleu}


def batch_mates(models: Path, precision: str, data_dir: Path = DATA_DIR, split: str = "dev",
                limit: int | None = None) -> list[dict[str, Any]]:
    """One row per arrangement (alone, lists of 64 in order, shuffled): the largest probability
    difference against alone, the labels that differ, the accuracy (the module's ``--batch-mates``)."""
    rows = read_sst2(data_dir, split)[:limit]
    texts = [r.text for r in rows]
    order = list(range(len(texts)))
    random.Random(0).shuffle(order)
    server = ServerProcess.ready(models, precision=precision)
    try:
        served = {name: model["precision"] for name, model in served_models(server.url).items()}
        def positive(batch: list[str], size: int) -> list[float]:
            return [res["probabilities"]["positive"] for res in api_sentiment(server.url, batch, size, 1)]

        alone = positive(texts, 1)
        in_order = positive(texts, 64)
        shuffled_scores = positive([texts[i] for i in order], 64)
        shuffled = [0.0] * len(texts)
        for at, i in enumerate(order):
            shuffled[i] = shuffled_scores[at]
    finally:
        server.stop()
    out = []
    for name, scores in (("alone", alone), ("lists of 64, in order", in_order), ("lists of 64, shuffled", shuffled)):
        out.append({"arrangement": name, "served": served.get("sentiment", "?"),
                    "max_diff": max(abs(a - b) for a, b in zip(scores, alone, strict=True)),
                    "labels_differ": sum((a > 0.5) != (b > 0.5) for a, b in zip(scores, alone, strict=True)),
                    "accuracy": sum((p > 0.5) == bool(r.label) for p, r in zip(scores, rows, strict=True)) / len(rows)})
    return out


EMOJI = ("", " \U0001f525\U0001f525\U0001f525", " \U0001f44d\U0001f44d", " \U0001f60d", " \U0001f602",
         " \U0001f621", " \u2764\ufe0f", " \U0001f3ac\U0001f37f")  # "" first: the sentences as they are


def emoji_accuracy(models: Path, precision: str, data_dir: Path = DATA_DIR, split: str = "dev",
                   limit: int | None = None) -> dict[str, float]:
    """SST-2 accuracy of ``split`` through the API with each of ``EMOJI`` after every sentence (``--emoji``)."""
    rows = read_sst2(data_dir, split)[:limit]
    server = ServerProcess.ready(models, precision=precision)
    try:
        accuracy = {}
        for suffix in EMOJI:
            results = api_sentiment(server.url, [r.text + suffix for r in rows], 64)
            accuracy[suffix] = sum((res["label"] == "positive") == bool(r.label)
                                   for res, r in zip(results, rows, strict=True)) / len(rows)
    finally:
        server.stop()
    return accuracy


def inside(sentence: str, emoji: str) -> str:
    """``sentence`` with ``emoji`` after its middle word, where people put one ("A dog 🐶 runs on
    the beach."): inside the words the translator reads, not at an edge, which it keeps as typed."""
    words = sentence.split(" ")
    at = len(words) // 2
    return " ".join([*words[:at], emoji.strip(), *words[at:]]) if emoji else sentence


def emoji_bleu(models: Path, precision: str, data_dir: Path = DATA_DIR, beam: int = 5,
               limit: int | None = None) -> dict[str, float]:
    """Lowercased 13a BLEU on Multi30k val through the API with each of ``EMOJI`` inside every
    source (``inside``; ``--emoji``)."""
    import sacrebleu

    pairs = read_multi30k_pairs(data_dir, "val")[:limit]
    server = ServerProcess.ready(models, precision=precision)
    try:
        translate = api_translator(server.url)
        bleu = {}
        for emoji in EMOJI:
            hyps = translate([inside(s, emoji) for s, _ in pairs], beam)
            bleu[emoji] = sacrebleu.corpus_bleu([h or "" for h in hyps], [[t for _, t in pairs]], tokenize="13a",
                                                lowercase=True).score
    finally:
        server.stop()
    return bleu


def translation_scores(models: Path, data_dir: Path = DATA_DIR, beam: int = 5,
                       limit: int | None = None) -> dict[str, list[float]]:
    """The ``score`` of every val and test_2016_flickr source's translation, by split (``--scores``;
    ``limit``: only the first so many of each)."""
    server = ServerProcess.ready(models)
    try:
        with httpx.Client(base_url=server.url, timeout=300) as client:
            scores: dict[str, list[float]] = {}
            for split in ("val", "test_2016_flickr"):
                sources = [s for s, _ in read_multi30k_pairs(data_dir, split)][:limit]
                scores[split] = []
                for i in range(0, len(sources), 64):
                    r = client.post("/v1/translate", json={"texts": sources[i : i + 64], "beam_size": beam})
                    r.raise_for_status()
                    scores[split] += [res["score"] for res in r.json()["results"]]
    finally:
        server.stop()
    return scores


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("--precision", nargs="+", default=["fp32", "int8"], choices=["fp32", "int8", "auto"])
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--batch-mates", action="store_true", help="how much a sentiment answer moves with its batch")
    p.add_argument("--split", default="dev", choices=["dev", "test"], help="--batch-mates: the SST-2 split")
    p.add_argument("--scores", action="store_true", help="the spread of translation scores on val and test")
    p.add_argument("--emoji", action="store_true",
                   help="sentiment accuracy and translation BLEU with emoji in every text")
    args = p.parse_args(argv)
    if args.emoji:
        print(f"| precision | after every SST-2 {args.split} sentence | accuracy |\n|---|---|---:|")
        for precision in args.precision:
            for suffix, accuracy in emoji_accuracy(args.models, precision, args.data_dir, args.split).items():
                print(f"| {precision} | {suffix.strip() or '(nothing)'} | {accuracy:.4f} |", flush=True)
        print(f"\n| precision | inside every Multi30k val source | BLEU (lc 13a, beam {args.beam}) |\n|---|---|---:|")
        for precision in args.precision:
            for emoji, bleu in emoji_bleu(args.models, precision, args.data_dir, args.beam).items():
                print(f"| {precision} | {emoji.strip() or '(nothing)'} | {bleu:.2f} |", flush=True)
        return
    if args.scores:
        print(f"| Multi30k split (beam {args.beam}) | captions | score p50 | p10 | p5 | p1 | lowest | below -1 "
              "| below -1.5 |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for split, scores in translation_scores(args.models, args.data_dir, args.beam).items():
            at = statistics.quantiles(scores, n=100, method="inclusive")  # at[k - 1]: the k-th percentile
            print(f"| {split} | {len(scores)} | {at[49]:.2f} | {at[9]:.2f} | {at[4]:.2f} | {at[0]:.2f} | "
                  f"{min(scores):.2f} | {sum(x < -1 for x in scores)} | {sum(x < -1.5 for x in scores)} |")
        return
    if args.batch_mates:
        print(f"| precision asked | served | SST-2 {args.split}, arranged | largest probability difference from "
              "alone | labels differing from alone | accuracy |\n|---|---|---|---:|---:|---:|")
        for precision in args.precision:
            for row in batch_mates(args.models, precision, args.data_dir, args.split):
                print(f"| {precision} | {row['served']} | {row['arrangement']} | {row['max_diff']:.2g} | "
                      f"{row['labels_differ']} | {row['accuracy']:.4f} |", flush=True)
        return
    print("| precision asked | served | SST-2 test accuracy | test_2016_flickr BLEU (lc 13a, beam "
          f"{args.beam}) |\n|---|---|---:|---:|")
    for precision in args.precision:
        result = measure(args.models, precision, args.data_dir, args.beam)
        served = ", ".join(f"{k} {v}" for k, v in sorted(result["served"].items()))
        print(f"| {precision} | {served} | {result['sst2_test_accuracy']:.4f} | "
              f"{result[f'test_2016_flickr_bleu_lc_beam{args.beam}']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
