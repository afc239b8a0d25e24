"""Measure the exported ONNX models through the service's own runners and print the figures.

    python -m export.evaluate sentiment --model-dir models/sentiment/1 [--write]
    python -m export.evaluate translation --model-dir models/translate-en-de/1 [--robustness] [--write]
    python -m export.evaluate translation --model-dir models/translate-en-de/1 --through-api

Sentiment: SST-2 dev and test accuracy. Translation: BLEU on Multi30k val and
test_2016_flickr with greedy and beam search, as sacreBLEU on detokenised cased output (13a)
and as lowercased 13a-tokenised BLEU (comparable with published Multi30k figures).
--robustness adds the table of the same sentences typed differently (as given, UPPER, lower,
Title, without final punctuation; beam 5), with refused sentences counted and scored as empty.
--through-api measures that table over HTTP on a real server (`python -m service` on a free
port, serving the model's repository): the figures a client gets.
--write stores the figures in model.json, and for this repository's models (models/<name>/<version>)
records golden outputs in its tests/golden/ (elsewhere only with --golden-dir: another model's
outputs there would break the committed models' tests).
--precision int8 measures the derived INT8 graphs (make int8); export/quantize.py --write records them.
Needs no torch: only onnxruntime, sentencepiece and sacrebleu (and httpx for --through-api).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from export.cli import run
from export.data import DEFAULT_DATA_DIR, read_multi30k_pairs, read_sst2
from export.text_variants import VARIANTS
from service.inputs import check_tokens
from service.model_card import RobustnessScore, RobustnessSpec, load_model_card, write_model_card
from service.runners import SentimentRunner, TranslationRunner, load_runner

# sources and a beam size -> a translation per source, or None where the service refuses it
Translator = Callable[[list[str], int], list[str | None]]
ROBUSTNESS_BEAM = 5

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

REPOSITORY = Path(__file__).resolve().parent.parent


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


def translate_all(runner: TranslationRunner, sources: list[str], beam: int, batch_size: int = 32
                  ) -> list[str | None]:
    """Translations in order; None for a source the API would refuse (the same token check)."""
    ids = [runner.tokenize(s) for s in sources]
    out: list[str | None] = [None] * len(ids)
    accepted = []
    for i, x in enumerate(ids):
        if check_tokens(x[:-1], runner.card.max_input_tokens, "text", runner.card.name):
            accepted.append(i)
    order = sorted(accepted, key=lambda i: len(ids[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        jobs = [runner.job(ids[i], beam) for i in chunk]
        for i, result in zip(chunk, runner.translate(jobs), strict=True):
            out[i] = runner.detokenize(result.tokens)
    return out


def runner_translator(runner: TranslationRunner) -> Translator:
    return lambda sources, beam: translate_all(runner, sources, beam)


def api_translator(url: str, batch_size: int = 16, concurrency: int = 4) -> Translator:
    """Translate through POST /v1/translate; a batch refused with 422 is retried text by text,
    so that only the refused texts come back as None."""
    import httpx

    def translate(sources: list[str], beam: int) -> list[str | None]:
        with httpx.Client(base_url=url, timeout=300) as client:
            def one_batch(texts: list[str]) -> list[str | None]:
                r = client.post("/v1/translate", json={"texts": texts, "beam_size": beam})
                if r.status_code == 422 and len(texts) > 1:
                    return [x for t in texts for x in one_batch([t])]
                if r.status_code == 422:
                    return [None]
                r.raise_for_status()
                return [res["translation"] for res in r.json()["results"]]

            chunks = [sources[i : i + batch_size] for i in range(0, len(sources), batch_size)]
            with ThreadPoolExecutor(concurrency) as pool:
                return [t for part in pool.map(one_batch, chunks) for t in part]

    return translate


def _bleu(hyps: list[str | None], refs: list[str]) -> tuple[float, float]:
    """(cased detokenised 13a, lowercased 13a) BLEU; a refused sentence counts as empty output."""
    import sacrebleu

    text = [h or "" for h in hyps]
    return (sacrebleu.corpus_bleu(text, [refs], tokenize="13a").score,
            sacrebleu.corpus_bleu(text, [refs], tokenize="13a", lowercase=True).score)


def evaluate_translation(runner: TranslationRunner, data_dir: Path, beams: list[int],
                         splits: tuple[str, ...] = ("val", "test_2016_flickr")) -> dict[str, float]:
    metrics = {}
    print(f"{'split':18s} {'decoding':8s} {'BLEU (cased, detok 13a)':>24s} {'BLEU (lowercased 13a)':>22s} {'sec':>6s}")
    for split in splits:
        pairs = read_multi30k_pairs(data_dir, split)
        sources, refs = [s for s, _ in pairs], [t for _, t in pairs]
        for beam in beams:
            start = time.monotonic()
            hyps = translate_all(runner, sources, beam)
            seconds = time.monotonic() - start
            cased, lower = _bleu(hyps, refs)
            name = "greedy" if beam == 1 else f"beam{beam}"
            metrics[f"{split}_bleu_{name}"] = round(cased, 2)
            metrics[f"{split}_bleu_lc_{name}"] = round(lower, 2)
            print(f"{split:18s} {name:8s} {cased:24.2f} {lower:22.2f} {seconds:6.1f}", flush=True)
    return metrics


def robustness_scores(translate: Translator, pairs_by_split: dict[str, list[tuple[str, str]]],
                      beam: int = ROBUSTNESS_BEAM) -> dict[str, dict[str, RobustnessScore]]:
    """Each split's BLEU with its sources typed as each variant (export/text_variants.py),
    against the unchanged references, and how many sentences the service refused."""
    scores: dict[str, dict[str, RobustnessScore]] = {}
    for split, pairs in pairs_by_split.items():
        refs = [t for _, t in pairs]
        scores[split] = {}
        for name, variant in VARIANTS.items():
            hyps = translate([variant(s) for s, _ in pairs], beam)
            cased, lower = _bleu(hyps, refs)
            scores[split][name] = RobustnessScore(bleu_lc=round(lower, 2), bleu=round(cased, 2),
                                                  refused=sum(h is None for h in hyps))
            print(f"  {split} {name:15s} BLEU lc {lower:6.2f}  cased {cased:6.2f}  refused "
                  f"{scores[split][name].refused}", flush=True)
    return scores


def robustness_table(spec: RobustnessSpec) -> str:
    """The table as markdown (for the README): one row per variant, a column pair per split."""
    splits = list(spec.scores)
    head = "| source typed as | " + " | ".join(f"{s} BLEU lc (cased) | of as given | refused" for s in splits) + " |"
    rule = "|---|" + "---|---|---|" * len(splits)
    rows = []
    for name in VARIANTS:
        cells = []
        for split in splits:
            score, given = spec.scores[split][name], spec.scores[split]["given"].bleu_lc
            cells.append(f"{score.bleu_lc:.2f} ({score.bleu:.2f}) | {score.bleu_lc / given if given else 0.0:.2f} "
                         f"| {score.refused}")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *rows])


def measure_robustness(translate: Translator, data_dir: Path, splits: tuple[str, ...], truecaser: bool,
                       measured: str) -> RobustnessSpec:
    pairs = {split: read_multi30k_pairs(data_dir, split) for split in splits}
    spec = RobustnessSpec(beam_size=ROBUSTNESS_BEAM, truecaser=truecaser, measured=measured,
                          scores=robustness_scores(translate, pairs))
    print(robustness_table(spec))
    return spec


def through_api(model_dir: Path, data_dir: Path, splits: tuple[str, ...]) -> RobustnessSpec:
    """The robustness table from a real server serving the model's repository (models/<name>/<v>)."""
    import httpx

    from loadtests.server import ServerProcess

    server = ServerProcess(model_dir.resolve().parent.parent).wait_ready()
    try:
        card = load_model_card(model_dir / "model.json")
        served = {m["name"]: m for m in httpx.get(f"{server.url}/v1/models", timeout=10).json()["models"]}
        precision = served[card.name].get("precision", "fp32")
        print(f"server {server.url} serves {card.name} in {precision}", flush=True)
        return measure_robustness(api_translator(server.url), data_dir, splits,
                                  truecaser=card.tokenizers["source"].truecaser is not None,
                                  measured=f"through POST /v1/translate on a real server ({precision})")
    finally:
        server.stop()


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
    p.add_argument("--beams", type=int, nargs="*", default=[1, 5],
                   help="beam sizes to evaluate (1 = greedy); none: only the robustness table")
    p.add_argument("--dev-only", action="store_true", help="only the dev/val split (for tuning: keep test unseen)")
    p.add_argument("--robustness", action="store_true",
                   help="translation: also the table of sources typed as given/UPPER/lower/Title/no final punct")
    p.add_argument("--without-truecaser", action="store_true",
                   help="translation: switch the card's source truecaser off (for comparisons; not with --write)")
    p.add_argument("--through-api", action="store_true",
                   help="translation: only the robustness table, measured over HTTP on a real server")
    p.add_argument("--write", action="store_true", help="store the metrics in model.json and record golden outputs")
    p.add_argument("--golden-dir", type=Path, default=None,
                   help="with --write: where to record golden outputs (default: this repository's tests/golden "
                        "for its own models/, none for a model elsewhere)")
    p.add_argument("--precision", choices=["fp32", "int8"], default="fp32",
                   help="int8: the graphs derived by export/quantize.py")
    args = p.parse_args(argv)

    if args.dev_only and args.write:
        p.error("--write records test figures; run it without --dev-only")
    if args.write and (args.without_truecaser or args.through_api):
        p.error("--write stores the figures of the model as served; leave out --without-truecaser/--through-api")
    if args.precision != "fp32" and (args.write or args.through_api):
        p.error("--write records the fp32 figures (`python -m export.quantize --write` records INT8's); "
                "--through-api measures the precision the server serves")
    task = {"sentiment": "text-classification", "translation": "translation"}[args.model]
    served = load_model_card(args.model_dir / "model.json")  # a missing card: one line (export/cli.py)
    if served.task != task:  # the model to measure comes from the card: a mismatch was measured as the card said
        p.error(f"--model-dir {args.model_dir} holds {served.name}, a {served.task} model, not a {args.model} model")
    splits = ("val",) if args.dev_only else ("val", "test_2016_flickr")
    if args.through_api:
        if args.model != "translation" or args.without_truecaser:
            p.error("--through-api measures the translator as served (with its card's truecaser)")
        through_api(args.model_dir, args.data_dir, splits)
        return
    runner = load_runner(args.model_dir, ["CPUExecutionProvider"], precision=args.precision)
    robustness = None
    if isinstance(runner, SentimentRunner):
        metrics = evaluate_sentiment(runner, args.data_dir, ("dev",) if args.dev_only else ("dev", "test"))
    else:
        if args.without_truecaser:
            runner.source_tokenizer.truecaser = None
        beams, metrics = args.beams, {}
        if args.robustness:
            robustness = measure_robustness(runner_translator(runner), args.data_dir, splits,
                                            truecaser=runner.source_tokenizer.truecaser is not None,
                                            measured="export/evaluate.py through the service's TranslationRunner")
            # the table's "as given" row is the beam-5 metric: not decoded twice
            for split, scores in robustness.scores.items():
                metrics[f"{split}_bleu_beam{ROBUSTNESS_BEAM}"] = scores["given"].bleu
                metrics[f"{split}_bleu_lc_beam{ROBUSTNESS_BEAM}"] = scores["given"].bleu_lc
            beams = [b for b in beams if b != ROBUSTNESS_BEAM]
        metrics.update(evaluate_translation(runner, args.data_dir, beams, splits))
    if args.write:
        card = load_model_card(args.model_dir / "model.json")
        card.metrics = {**card.metrics, **metrics}
        card.robustness = robustness or card.robustness
        write_model_card(card, args.model_dir / "model.json")
        golden_dir = args.golden_dir or golden_dir_of(args.model_dir)
        if golden_dir is None:
            print(f"metrics written to {args.model_dir / 'model.json'} (golden outputs are recorded for this "
                  "repository's own models/; give --golden-dir to record them for this one)")
            return
        golden_dir.mkdir(parents=True, exist_ok=True)
        golden = golden_dir / f"{args.model_dir.resolve().parent.name}.json"  # the folder's: a card's name may be stale
        golden.write_text(json.dumps(golden_outputs(runner), indent=2, ensure_ascii=False) + "\n")
        print(f"metrics written to {args.model_dir / 'model.json'}; golden outputs to {golden}")


def golden_dir_of(model_dir: Path) -> Path | None:
    """tests/golden for a version of this repository's own models/ (whatever the working
    folder), else None: the golden files are the committed models' test fixtures."""
    if model_dir.resolve().parent.parent == (REPOSITORY / "models").resolve():
        return REPOSITORY / "tests" / "golden"
    return None


if __name__ == "__main__":
    run(main)
