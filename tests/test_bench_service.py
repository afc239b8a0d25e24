"""A very short real run of the serving benchmark: every section is produced (figures are not
judged here; the machines are shared and noisy)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests import bench_service
from tests.conftest import COMMITTED_MODELS


def test_benchmark_runs_every_section(tmp_path: Path) -> None:
    if not list(COMMITTED_MODELS.glob("*/*/model.json")):
        pytest.skip("no committed models")
    out = tmp_path / "bench.md"
    bench_service.main(["--models", str(COMMITTED_MODELS), "--duration", "0.6", "--rounds", "1", "--out", str(out)])
    report = out.read_text()
    for section in ("## Start-up", "## Sentiment: raw ONNX Runtime", "## Sentiment over HTTP", "64 clients / raw best",
                    "## Translation over HTTP", "iteration-level / whole-request at 64",
                    "streamed / non-streamed at 64", "p50 latency (ms) by source",
                    "## Ceiling on this machine", "ideal ratios"):
        assert section in report
    # served translations equal solo decoding, for both decoding modes
    assert report.count("**0 differ**") == 2
