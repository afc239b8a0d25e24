"""Schemathesis over the served OpenAPI document, as a user runs it (`st run`): every check, the
examples, coverage and fuzzing phases, model control left out. The only refusals allowed are those
JSON Schema cannot state, by their messages (tests/api_fuzz_checks.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import Server

ROOT = Path(__file__).resolve().parent.parent
ST = Path(sys.executable).with_name("st")


def test_schemathesis_finds_nothing_the_document_does_not_allow(committed_server: Server, tmp_path: Path) -> None:
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.api_fuzz_checks", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [str(ST), "run", f"{committed_server.url}/openapi.json", "--checks", "all",
         "--exclude-checks", "positive_data_acceptance,not_a_server_error",
         "--phases", "examples,coverage,fuzzing", "--max-examples", "40", "--seed", "1",
         "--exclude-path-regex", "^/v2/repository", "--no-color", "--request-timeout", "30"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-6000:]
    assert "No issues found" in report, report[-3000:]
    # the whole document was exercised: v1, generate, and v2 inference spelled out per model
    tested = re.search(r"Tested: (\d+)", report)
    assert tested and int(tested.group(1)) >= 20, report[-3000:]
