"""service/__init__.py: ONNX Runtime's telemetry is off unless the operator turns it on."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = "import service, onnxruntime, os; print(os.environ['ORT_DISABLE_TELEMETRY'])"


def _run(env: dict[str, str]) -> str:
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_importing_the_service_opts_out_of_onnx_runtime_telemetry_before_it_loads() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    assert _run(env) == "1"
    assert _run({**env, "ORT_DISABLE_TELEMETRY": "0"}) == "0"  # the operator's choice wins
