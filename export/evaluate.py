"""Measure the exported ONNX models through the service's own runners and print the figures.

    python -m export.evaluate sentiment --model-dir models/sentiment/1 [--write]
    python -m export.evaluate translation --model-dir models/translate-en-de/1 [--write]

Sentiment: SST-2 dev and test accuracy. Translation: BLEU on Multi30k val and
test_2016_flickr with greedy and beam search, as sacreBLEU on detokenised cased output (13a)
and as lowercased 13a-tokenised BLEU (comparable with published Multi30k figures).
--write stores the figures in model.json and records golden outputs for tests/golden/.
Needs no torch: only onnxruntime, sentencepiece and sacrebleu.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from export.data import DEFAULT_DATA_DIR, read_multi30k_pairs, read_sst2
from service.model_card import load_model_card, write_model_card
from service.runners import SentimentRunner, TranslationRunner, load_runner

GOLDEN_SENTIMENT = [
    "A gorgeous, witty, seductive movie.",
    "It's a dull, lifeless film that never finds its footing.",
    "not bad at all",
    "I can't say I liked it 😐",
    "!!!",
]
GOLDEN_TRANSLATION = [
    "A man in a blue shirt is riding a bicycle.",
    "Two dogs play in the snow.",
    "A little girl is climbing into a wooden playhouse.",
    "Hello!",
]


def evaluate_sentiment(runner: SentimentRunner, data_dir: Path, splits: tuple[str, ...] = ("dev", "test")
                       ) -> dict[str, float]:
    metrics = {}
    for split in splits:
        rows = read_sst2(data_dir, split)
        probs = np.concatenate([runner.run([runner.tokenize(r.text) for r in rows[i : i + 64]])
                                for i in range(0, len(rows), 64)])
        acc = float((probs.argmax(-1) == np.array([r.label for r in rows])).mean())
        metrics[f"sst2_{split}_accuracy"] = round(acc, 4)
        print(f"SST-2 {split:4s} accuracy {acc:.4f}  ({len(rows)} sentences)")
    return metrics


def translate_all(runner: TranslationRunner, sources: list[str], beam: int, batch_size: int = 32) -> list[str]:
    ids = [runner.tokenize(s) for s in sources]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[str] = [""] * len(ids)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        jobs = [runner.job(ids[i], beam) for i in chunk]
        for i, result in zip(chunk, runner.translate(jobs), strict=True):
            out[i] = runner.detokenize(result.tokens)
    return out


def evaluate_translation(runner: TranslationRunner, data_dir: Path, beams: list[int],
                         splits: tuple[str, ...] = ("val", "test_2016_flickr")) -> dict[str, float]:
    import sacrebleu

    metrics = {}
    print(f"{'split':18s} {'decoding':8s} {'BLEU (cased, detok 13a)':>24s} {'BLEU (lowercased 13a)':>22s} {'sec':>6s}")
    for split in splits:
        pairs = read_multi30k_pairs(data_dir, split)
        sources, refs = [s for s, _ in pairs], [t for _, t in pairs]
        for beam in beams:
            start = time.monotonic()
            hyps = translate_all(runner, sources, beam)
            seconds = time.monotonic() - start
            cased = sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a").score
            lower = sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a", lowercase=True).score
            name = "greedy" if beam == 1 else f"beam{beam}"
            metrics[f"{split}_bleu_{name}"] = round(cased, 2)
            metrics[f"{split}_bleu_lc_{name}"] = round(lower, 2)
            print(f"{split:18s} {name:8s} {cased:24.2f} {lower:22.2f} {seconds:6.1f}", flush=True)
    return metrics


def golden_outputs(runner: SentimentRunner | TranslationRunner) -> dict[str, object]:
    """Fixed inputs and what the committed model answers; tests/test_committed_models.py replays them."""
    if isinstance(runner, SentimentRunner):
        probs = runner.run([runner.tokenize(t) for t in GOLDEN_SENTIMENT])
        return {"inputs": GOLDEN_SENTIMENT, "probabilities": probs.round(6).tolist()}
    beam = runner.decoding.default_beam_size
    jobs = [runner.job(runner.tokenize(t), beam) for t in GOLDEN_TRANSLATION]
    results = runner.translate(jobs)
    return {"inputs": GOLDEN_TRANSLATION, "beam_size": beam,
            "translations": [runner.detokenize(r.tokens) for r in results],
            "scores": [round(r.score, 5) for r in results]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=["sentiment", "translation"])
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--beams", type=int, nargs="+", default=[1, 5], help="beam sizes to evaluate (1 = greedy)")
    p.add_argument("--dev-only", action="store_true", help="only the dev/val split (for tuning: keep test unseen)")
    p.add_argument("--write", action="store_true", help="store the metrics in model.json and record golden outputs")
    p.add_argument("--golden-dir", type=Path, default=Path("tests/golden"))
    args = p.parse_args(argv)

    runner = load_runner(args.model_dir, ["CPUExecutionProvider"])
    if args.dev_only and args.write:
        p.error("--write records test figures; run it without --dev-only")
    if isinstance(runner, SentimentRunner):
        metrics = evaluate_sentiment(runner, args.data_dir, ("dev",) if args.dev_only else ("dev", "test"))
    else:
        splits = ("val",) if args.dev_only else ("val", "test_2016_flickr")
        metrics = evaluate_translation(runner, args.data_dir, args.beams, splits)
    if args.write:
        card = load_model_card(args.model_dir / "model.json")
        card.metrics = {**card.metrics, **metrics}
        write_model_card(card, args.model_dir / "model.json")
        args.golden_dir.mkdir(parents=True, exist_ok=True)
        golden = args.golden_dir / f"{card.name}.json"
        golden.write_text(json.dumps(golden_outputs(runner), indent=2, ensure_ascii=False) + "\n")
        print(f"metrics written to {args.model_dir / 'model.json'}; golden outputs to {golden}")


if __name__ == "__main__":
    main()
