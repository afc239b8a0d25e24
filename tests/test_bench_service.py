"""A very short real run of the serving benchmark: every section is produced (figures are not
judged here; the machines are shared and noisy)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from loadtests import api_quality, bench_service
from service.runners import TranslationRunner, load_runner


def test_benchmark_runs_every_section(int8_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the defaults on a CPU: both models in INT8; served translations equal solo decoding exactly
    # (the translator's INT8 graphs do not move with the batch: export/row_int8.py)
    monkeypatch.setenv("SEQSERVE_PRECISION", "auto")
    out = tmp_path / "bench.md"
    bench_service.main(["--models", str(int8_repo), "--duration", "0.6", "--rounds", "1", "--skip-quality",
                        "--out", str(out)])
    report = out.read_text()
    for section in ("## Start-up", "## Sentiment: raw ONNX Runtime", "| batch size | fp32 | int8 |",
                    "## Sentiment over HTTP", "served in int8", "of the int8 limit", "64 clients / int8 limit",
                    "## Server CPU per request", "## Translation over HTTP", "iteration-level / whole-request at 64",
                    "streamed / non-streamed at 64", "p50 latency (ms) by source", "## Ceiling on this machine",
                    "ideal ratios"):
        assert section in report, section
    assert re.search(r"limits: \*\*fp32 [\d,]+ sentences/s\*\* at batch \d+; \*\*int8 [\d,]+ sentences/s\*\*", report)
    # one row per client count, each with its batches' padded share, and a model and a serving
    # share of the server's CPU
    rows = re.findall(r"(?m)^\| (1|16|64) \| [\d.]+ \| \d+% \| (\d+) \| (\d+) \| \*\*(-?\d+)\*\* \| \d+ \|$", report)
    assert [r[0] for r in rows] == ["1", "16", "64"]
    assert all(int(model) > 0 and int(serving) > 0 and abs(int(total) - int(model) - int(serving)) <= 1
               for _, total, model, serving in rows)
    # served translations equal solo decoding, for both decoding modes
    assert report.count("**0 differ**") == 2


def test_solo_decoding_reads_the_sentences_the_server_reads(int8_repo: Path) -> None:
    """A caption opening with "# 8" is served as "#" kept and "8 ..." translated: the check
    decodes that sentence alone, not the whole text (which the model translates otherwise)."""
    runner = load_runner(int8_repo / "translate-en-de" / "1", ["CPUExecutionProvider"], precision="fp32")
    assert isinstance(runner, TranslationRunner)
    text = "# 8 for Iowa State stiff arms a Texas AM player attempting to tackle him."

    def served(source: str) -> bytes:
        tokens = runner.translate([runner.job(runner.tokenize(source), 1)])[0].tokens
        return json.dumps({"target_tokens": runner.target_tokenizer.pieces(tokens)}).encode()

    assert bench_service.check_identical(runner, [text], {0: served(text[2:])}, 1) == (1, 0)
    assert bench_service.check_identical(runner, [text], {0: served(text)}, 1) == (1, 1)


def test_quality_through_the_api_in_each_precision(int8_repo: Path) -> None:
    from tests.conftest import DATA_DIR

    if not (DATA_DIR / "sst2").is_dir():
        pytest.skip("no data sets")
    results = {p: api_quality.measure(int8_repo, p, DATA_DIR, limit=48) for p in ("fp32", "int8")}
    for precision, result in results.items():
        assert result["served"] == {"sentiment": precision, "translate-en-de": precision}
        assert result["sst2_test_accuracy"] >= 0.75
        assert result["test_2016_flickr_bleu_lc_beam5"] >= 25


def test_translation_scores_through_the_api(int8_repo: Path) -> None:
    from tests.conftest import DATA_DIR

    if not (DATA_DIR / "multi30k").is_dir():
        pytest.skip("no data sets")
    scores = api_quality.translation_scores(int8_repo, DATA_DIR, limit=20)
    assert list(scores) == ["val", "test_2016_flickr"]
    # length-normalised log-probabilities of captions the model translates well: below 0, mostly near it
    assert all(len(s) == 20 and max(s) < 0 and sorted(s)[10] > -1.5 for s in scores.values())


def test_emoji_do_not_move_sentiment_accuracy(int8_repo: Path) -> None:
    """The model never saw an emoji: " 🔥🔥🔥" after each SST-2 dev sentence cost it 18 points of
    accuracy before they were kept out of what it reads."""
    from tests.conftest import DATA_DIR

    if not (DATA_DIR / "sst2").is_dir():
        pytest.skip("no data sets")
    accuracy = api_quality.emoji_accuracy(int8_repo, "fp32", DATA_DIR, limit=64)
    assert list(accuracy) == list(api_quality.EMOJI) and len(set(accuracy.values())) == 1
