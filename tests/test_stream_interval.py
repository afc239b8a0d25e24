"""loadtests/stream_interval.py: a short real run against two servers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_prints_streamed_against_non_streamed_throughput_per_interval(tiny_repo: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "loadtests.stream_interval", "--models", str(tiny_repo),
                          "--intervals", "0", "50", "--rounds", "1", "--duration", "0.5", "--clients", "4"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, check=True).stdout
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert {"0", "50"} <= rows.keys(), out
    for interval in ("0", "50"):
        cells = [c.strip() for c in rows[interval].strip("|").split("|")]
        plain, streamed, ratio = float(cells[1]), float(cells[2]), float(cells[3].strip("*"))
        assert plain > 0 and streamed > 0 and abs(ratio - streamed / plain) < 0.01, rows[interval]
