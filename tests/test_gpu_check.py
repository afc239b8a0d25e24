"""The GPU check's dry run (the CPU provider in place of CUDA, tiny durations): every check and
every serving phase runs and lands in the JSON; a spent budget starts no more phases. The
figures themselves are not judged here (a shared 2-core machine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtests import gpu_check
from tests.conftest import COMMITTED_MODELS, needs_data

pytestmark = [needs_data, pytest.mark.skipif(not list(COMMITTED_MODELS.glob("*/*/model.json")),
                                             reason="no committed models")]


def test_the_dry_run_runs_every_check_and_phase(tmp_path: Path) -> None:
    code = gpu_check.main(["--dry-run", "--models", str(COMMITTED_MODELS), "--out", str(tmp_path),
                           "--budget-s", "600", "--client-processes", "1"])
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert code == 0 and data["ok"] is True
    checks = data["checks"]
    for model in ("sentiment", "translate-en-de"):
        found = checks["placement"][model]
        # the profiler saw the recurrent nodes, all on the expected provider (the CPU here)
        assert found["ok"] and found["rnn_nodes"] >= 2 and found["provider"] == "CPUExecutionProvider"
    assert "row_ops_survivors_joiners" in checks["placement"]["translate-en-de"]["nodes"]  # the device path ran
    assert checks["parity"]["ok"] and checks["parity"]["decoder_log_probs_max_abs_diff"] == 0.0
    assert set(data["phases"]) == {p.name for p in gpu_check.phases()} and not data["skipped"]
    assert len(data["phases"]) == 26
    for name, figures in data["phases"].items():
        assert {"rps", "p50_ms", "p99_ms", "non_2xx"} <= set(figures)
        if "translate" in name:
            assert "p99_ms_by_source_length" in figures
    assert len(data["targets"]) == 4
    assert all(c["ok"] for c in checks["served_equals_solo"].values())
    assert "## Phases" in (tmp_path / "gpu_check.md").read_text()


def test_a_spent_budget_starts_no_phase_and_still_writes_its_report(tmp_path: Path) -> None:
    code = gpu_check.main(["--dry-run", "--models", str(COMMITTED_MODELS), "--out", str(tmp_path),
                           "--budget-s", "1", "--client-processes", "1"])
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert code == 0  # what ran passed
    assert data["phases"] == {} and len(data["skipped"]) == 26
    assert all("budget" in s for s in data["skipped"])
