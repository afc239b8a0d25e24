"""Shared fixtures: a tiny, really exported model repository, and real servers on loopback."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtests.server import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("SEQSERVE_DATA_DIR", ROOT.parent / "shared" / "data"))
COMMITTED_MODELS = Path(os.environ.get("SEQSERVE_TEST_MODELS", ROOT / "models"))

needs_data = pytest.mark.skipif(not (DATA_DIR / "sst2").is_dir(), reason=f"no data sets under {DATA_DIR}")

TINY_SENTIMENT = ["--vocab", "400", "--embed-dim", "32", "--hidden", "16", "--epochs", "1", "--limit", "400"]
TINY_TRANSLATION = ["--src-vocab", "400", "--tgt-vocab", "400", "--embed-dim", "32", "--encoder-hidden", "16",
                    "--decoder-hidden", "32", "--attention-dim", "16", "--epochs", "1", "--limit", "400",
                    "--val-limit", "8", "--batch-size", "64"]


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small models trained for a few steps and exported through the real export path."""
    if not (DATA_DIR / "sst2").is_dir():
        pytest.skip(f"no data sets under {DATA_DIR}")
    base = tmp_path_factory.mktemp("tiny")
    repo = base / "models"
    from export.onnx_export import export_sentiment, export_translation
    from export.train_sentiment import main as train_sentiment
    from export.train_translation import main as train_translation

    train_sentiment([*TINY_SENTIMENT, "--data-dir", str(DATA_DIR), "--run-dir", str(base / "run-s")])
    train_translation([*TINY_TRANSLATION, "--data-dir", str(DATA_DIR), "--run-dir", str(base / "run-t")])
    export_sentiment(base / "run-s", repo / "sentiment" / "1", DATA_DIR)
    export_translation(base / "run-t", repo / "translate-en-de" / "1", DATA_DIR)
    return repo


class Server(ServerProcess):
    """The shared server helper, keeping the log so tests can read refusal messages. It serves
    fp32 unless told otherwise: tests compare answers across batch compositions, which the sentiment
    model's INT8 moves slightly (its activation scales are per batch); tests/test_registry.py and
    tests/test_bench_service.py serve INT8."""

    def __init__(self, repo: Path, **settings: str) -> None:
        super().__init__(repo, capture_output=True, settings={"precision": "fp32", **settings})

    def wait_ready(self, timeout: float = 60.0) -> Server:
        super().wait_ready(timeout)
        return self


@pytest.fixture(scope="session")
def committed_server() -> Iterator[Server]:
    if not list(COMMITTED_MODELS.glob("*/*/model.json")):
        pytest.skip("no committed models")
    server = Server(COMMITTED_MODELS).wait_ready()
    yield server
    server.stop()


@pytest.fixture
def access_lines(monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[dict[str, Any]]]:
    """The access-log lines this process writes during the test, parsed (service/access_log.py)."""
    from service.access_log import access_log

    access_log.flush()
    stream = io.StringIO()
    monkeypatch.setattr(access_log, "_stream", stream)

    def lines() -> list[dict[str, Any]]:
        access_log.flush()
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    return lines


def model_repository(dest: Path, source: Path = COMMITTED_MODELS) -> Path:
    """A model repository of the committed versions without derived graphs: links to their files,
    a copy of each model.json (tests may rewrite it)."""
    for card in source.glob("*/*/model.json"):
        folder = dest / card.parent.relative_to(source)
        folder.mkdir(parents=True)
        for file in card.parent.iterdir():
            if file.name == "model.json":
                (folder / file.name).write_bytes(file.read_bytes())
            elif not file.name.endswith(".int8.onnx"):
                (folder / file.name).symlink_to(file.resolve())
    return dest


@pytest.fixture(scope="session")
def int8_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed models with INT8 graphs derived by export/quantize.py, once per session
    (checked on the built-in probe: quicker than the data sets, which `make int8` uses)."""
    if not list(COMMITTED_MODELS.glob("*/*/model.json")):
        pytest.skip("no committed models")
    from export.quantize import quantize

    repo = model_repository(tmp_path_factory.mktemp("int8") / "models")
    for card in sorted(repo.glob("*/*/model.json")):
        assert quantize(card.parent, None) is not None
    return repo
