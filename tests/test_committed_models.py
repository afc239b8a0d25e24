"""The committed models load in ONNX Runtime and reproduce the outputs recorded at export."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service.runners import SentimentRunner, TranslationRunner, load_runner
from tests.conftest import COMMITTED_MODELS, ROOT

GOLDEN = ROOT / "tests" / "golden"


def _golden(name: str) -> dict:  # type: ignore[type-arg]
    path = GOLDEN / f"{name}.json"
    if not path.exists():
        pytest.skip(f"no golden outputs at {path}")
    return json.loads(path.read_text())


def test_sentiment_reproduces_recorded_probabilities() -> None:
    golden = _golden("sentiment")
    runner = load_runner(COMMITTED_MODELS / "sentiment" / "1", ["CPUExecutionProvider"])
    assert isinstance(runner, SentimentRunner)
    probs = runner.run([runner.tokenize(t) for t in golden["inputs"]])
    np.testing.assert_allclose(probs, np.array(golden["probabilities"]), atol=1e-5)


def test_translation_reproduces_recorded_outputs() -> None:
    golden = _golden("translate-en-de")
    runner = load_runner(COMMITTED_MODELS / "translate-en-de" / "1", ["CPUExecutionProvider"])
    assert isinstance(runner, TranslationRunner)
    jobs = [runner.job(runner.tokenize(t), golden["beam_size"]) for t in golden["inputs"]]
    results = runner.translate(jobs)
    assert [runner.detokenize(r.tokens) for r in results] == golden["translations"]
    assert [r.score for r in results] == pytest.approx(golden["scores"], abs=1e-4)


def test_the_runtime_path_imports_no_torch(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from service.app import create_app\n"
        "from service.runners import load_runner\n"
        "for d in sorted(Path(sys.argv[1]).glob('*/*')):\n"
        "    load_runner(d, ['CPUExecutionProvider'])\n"
        "create_app()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(COMMITTED_MODELS)], cwd=ROOT, capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
