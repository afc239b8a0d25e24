"""Training smoke tests on tiny slices: a few steps run, log, checkpoint, plot, and resume."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from export.train_sentiment import main as train_sentiment
from export.train_translation import main as train_translation
from tests.conftest import DATA_DIR, TINY_SENTIMENT, TINY_TRANSLATION, needs_data


def _epochs(run: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


@needs_data
def test_sentiment_training_runs_logs_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [*TINY_SENTIMENT, "--limit", "120", "--data-dir", str(DATA_DIR), "--run-dir", str(tmp_path)]
    train_sentiment(args)
    assert [r["epoch"] for r in _epochs(tmp_path)] == [1]
    for name in ("best.pt", "last.pt", "training_curves.png", "sentiment.spm.model"):
        assert (tmp_path / name).is_file()
    train_sentiment([*args, "--epochs", "2"])  # resumes after epoch 1, runs only epoch 2
    rows = _epochs(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert 0.0 <= rows[-1]["dev_acc"] <= 1.0
    # what the model card says of the run: it said the whole data set and "2-core CPU" whatever was used
    assert rows[-1]["train_examples"] == 120 and rows[-1]["seed"] == 13
    assert rows[-1]["hardware"] == f"{os.cpu_count()}-core CPU"
    assert "reusing sentiment.spm.model from" in capsys.readouterr().out  # its vocabulary is the first run's
    # other sizes than the run was started with: a torch traceback of "size mismatch" lines before
    with pytest.raises(SystemExit, match=r"last.pt holds a model of other sizes than these arguments \(--hidden 16, "
                                         r"not 24\): resume with the arguments it was started with"):
        train_sentiment([*args, "--epochs", "3", "--hidden", "24"])
    with pytest.raises(SystemExit, match=r"\(--layers 2, not 1\)"):  # torch's text named no size for this one
        train_sentiment([*args, "--epochs", "3", "--layers", "1"])


@needs_data
def test_translation_training_runs_and_logs_bleu(tmp_path: Path) -> None:
    train_translation([*TINY_TRANSLATION, "--limit", "100", "--data-dir", str(DATA_DIR), "--run-dir", str(tmp_path)])
    (row,) = _epochs(tmp_path)
    assert row["epoch"] == 1 and "val_bleu" in row and row["train_loss"] > 0
    for name in ("best.pt", "last.pt", "training_curves.png", "source.spm.model", "target.spm.model"):
        assert (tmp_path / name).is_file()
