"""loadtests/perf_analyzer.py: Triton's own load generator (the stock binary) against a real
server, both models, over HTTP, gRPC and gRPC streams, every request answered."""

from __future__ import annotations

import os
import subprocess

import pytest

from loadtests import perf_analyzer
from tests.conftest import Server


def test_perf_analyzer_measures_both_models_on_every_protocol(committed_server: Server,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    binary = perf_analyzer.BUNDLED / "bin" / "perf_analyzer"
    try:
        runs = subprocess.run([str(binary), "--version"], capture_output=True, check=False,
                              env=perf_analyzer.environment(str(binary))).returncode == 0
    except OSError:  # not installed, or built for another architecture (the wheel is x86-64)
        runs = False
    if not runs:
        message = "needs `make test`'s .venv/perf_analyzer and Debian's libb64-0d (.ci/run installs both)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must run the stock tool, never skip it
        pytest.skip(message)
    status = perf_analyzer.main(["--url", committed_server.url.removeprefix("http://"),
                                 "--grpc-url", committed_server.grpc_url, "--binary", str(binary),
                                 "--protocols", "http,grpc,grpc-stream", "--concurrency", "4", "--texts", "40",
                                 "--interval-ms", "500", "--max-trials", "4", "--stability", "100"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| sentiment")
            or line.startswith("| translate-en-de")]
    assert status == 0, rows
    assert len(rows) == 6 and all(row.endswith("| 0 |") for row in rows), rows


def test_a_server_given_without_its_grpc_address_is_refused_before_measuring(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:  # the default protocols include grpc: it crashed after the HTTP rows
        perf_analyzer.main(["--url", "127.0.0.1:1"])
    assert exit_.value.code == 2 and "--grpc-url is needed" in capsys.readouterr().err
