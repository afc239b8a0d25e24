"""How to score a text longer than the sentiment model's subword limit (256): the evidence.

    python -m loadtests.long_texts [--docs 400] [--precision fp32]

The model was trained on single sentences (SST-2), and a review of a few hundred words was refused
with 422. There is no labelled data of long reviews here, so this builds pseudo-reviews from the
SST-2 test sentences: 6-14 sentences each, all of one label, or three quarters of one label (the
document's) and a quarter of the other, as a review mixes praise and complaint. Each is joined into
one text and cut into sentences as the server cuts it (service/sentences.py). For the documents
over the limit, it prints the accuracy of each way to score them with the model alone (ONNX
Runtime, no server):

- the first 256 subwords (what truncation, e.g. Hugging Face's ``truncation=True``, would do);
- the last 256 subwords (where a review's verdict often is);
- the sentences packed whole into chunks of at most 256 subwords, probabilities weighted by length;
- each sentence alone, probabilities weighted by length;
- each sentence alone, the plain mean of their probabilities (what the server does:
  service/inference.py ``SentimentPieces``).

Then, for the SST-2 dev and test items the splitter cuts in two or more (mostly at an ellipsis),
the accuracy scored whole and as the mean of their sentences: why a text within the limit is
still scored whole.

Synthetic documents are bags of independent sentences; real reviews have an order and a verdict,
so read the figures as a comparison of the ways, not as the accuracy on real reviews.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from export.data import read_sst2
from loadtests.inputs import DATA_DIR
from loadtests.server import ROOT
from service.registry import load_model
from service.runners import SentimentRunner
from service.sentences import sentences
from service.settings import Settings

Scorer = Callable[[Sequence[Sequence[int]]], np.ndarray]  # positive-class probability of each


def documents(texts_by_label: dict[int, list[str]], count: int, majority: float,
              seed: int = 0) -> list[tuple[str, int]]:
    """``count`` pseudo-reviews (text, label), labels alternating; each sentence of the document's
    label with probability ``majority``."""
    rng = random.Random(seed)
    out = []
    for n in range(count):
        label = n % 2
        picks = [rng.choice(texts_by_label[label] if rng.random() < majority else texts_by_label[1 - label])
                 for _ in range(rng.randint(6, 14))]
        out.append((" ".join(picks), label))
    return out


def _packed(parts: list[list[int]], limit: int) -> list[list[int]]:
    chunks: list[list[int]] = [[]]
    for part in parts:
        if chunks[-1] and len(chunks[-1]) + len(part) > limit:
            chunks.append([])
        chunks[-1] = chunks[-1] + part
    return chunks


def _weighted(score: Scorer, pieces: list[list[int]]) -> float:
    weights = np.array([len(p) for p in pieces], dtype=np.float64)
    return float((score(pieces) * weights).sum() / weights.sum())


def strategies(limit: int) -> dict[str, Callable[[Scorer, list[int], list[list[int]]], float]]:
    """Name -> how it scores one text from (its subword ids, its sentences' ids)."""
    return {
        f"first {limit} subwords": lambda score, whole, parts: float(score([whole[:limit]])[0]),
        f"last {limit} subwords": lambda score, whole, parts: float(score([whole[-limit:]])[0]),
        f"sentences packed in chunks of <= {limit}, length-weighted": (
            lambda score, whole, parts: _weighted(score, _packed(parts, limit))),
        "each sentence, length-weighted": lambda score, whole, parts: _weighted(score, parts),
        "each sentence, plain mean (served)": lambda score, whole, parts: float(score(parts).mean()),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("--docs", type=int, default=400, help="documents per mix")
    p.add_argument("--precision", default="fp32", choices=["fp32", "int8"])
    args = p.parse_args(argv)
    model = load_model(args.models / "sentiment" / "1" / "model.json", ["CPUExecutionProvider"],
                       Settings(precision=args.precision))
    runner = model.runner
    assert isinstance(runner, SentimentRunner)
    limit = model.card.max_input_tokens

    def score(batch: Sequence[Sequence[int]]) -> np.ndarray:
        return np.concatenate([runner.run(batch[i : i + 32])[:, 1] for i in range(0, len(batch), 32)])

    rows = read_sst2(args.data_dir, "test")
    by_label = {label: [r.text for r in rows if r.label == label] for label in (0, 1)}
    ways = strategies(limit)
    print(f"| documents over {limit} subwords | " + " | ".join(ways) + " |")
    print("|---|" + "---:|" * len(ways))
    for majority in (1.0, 0.75):
        over = [(runner.tokenize(text), [runner.tokenize(s) for s in sentences(text)], label)
                for text, label in documents(by_label, args.docs, majority)]
        over = [doc for doc in over if len(doc[0]) > limit]
        accuracy = [sum((way(score, whole, parts) > 0.5) == bool(label) for whole, parts, label in over) / len(over)
                    for way in ways.values()]
        print(f"| {len(over)} of {args.docs}, {majority:.0%} of sentences of the label | "
              + " | ".join(f"{a:.3f}" for a in accuracy) + " |", flush=True)
    # why a text within the limit is still scored whole: the SST-2 items the splitter cuts
    print("\n| SST-2 items cut into sentences | scored whole | plain mean of the sentences |\n|---|---:|---:|")
    for split in ("dev", "test"):
        cut = [(r, parts) for r in read_sst2(args.data_dir, split) if len(parts := sentences(r.text)) > 1]
        whole = score([runner.tokenize(r.text) for r, _ in cut])
        mean = [float(score([runner.tokenize(p) for p in parts]).mean()) for _, parts in cut]
        right = [sum((p > 0.5) == bool(r.label) for p, (r, _) in zip(probs, cut, strict=True)) / len(cut)
                 for probs in (whole, mean)]
        print(f"| {split}: {len(cut)} | {right[0]:.3f} | {right[1]:.3f} |", flush=True)


if __name__ == "__main__":
    main()
