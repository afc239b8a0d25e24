"""loadtests/baseline.py: this checkout against another, a fresh server of each side a round (here
the other checkout is this one: its .venv and models/ are there; figures are not judged)."""

from __future__ import annotations

import re

import pytest

from loadtests import baseline
from loadtests.inputs import DATA_DIR, sentiment_texts, translation_texts
from loadtests.load_generator import LoadGenerator
from loadtests.server import AS_DEPLOYED, ROOT, ServerProcess


def test_every_phase_is_compared_with_a_fresh_server_of_each_side_a_round() -> None:
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("no .venv in this checkout to run as the baseline")
    ours: list[ServerProcess] = []

    def start_ours() -> ServerProcess:
        ours.append(ServerProcess.ready(ROOT / "models", settings=AS_DEPLOYED))
        return ours[-1]

    lines: list[str] = []
    baseline.compare(ROOT, start_ours, LoadGenerator(warmup_s=0.1), sentiment_texts(DATA_DIR, "test")[:200],
                     translation_texts(DATA_DIR, "test_2016_flickr")[:100], 0.2, 2, lines.append)
    assert len(ours) == 2 and len({server.port for server in ours}) == 2  # a new one each round
    assert all(server.proc.poll() is not None for server in ours)  # and stopped after its round
    assert "2 rounds, a fresh server of each side a round" in lines[0]
    rows = [re.fullmatch(r"\| (.+?) \| [\d,.]+ (?:sentences|requests)/s \| [\d,.]+ \| \*\*[\d.]+x\*\* \| \d+ / \d+ \| "
                         r"0 / 0 \|", line) for line in lines[3:8]]
    assert [row[1] for row in rows if row] == [phase.name for phase in baseline.phases([], [])], lines
    # the sentiment phases' server CPU, read around the same runs: this checkout's split, the baseline's whole
    start = next(i for i, line in enumerate(lines) if line.startswith("## Sentiment: server CPU"))
    row_shape = r"\| (.+?) \| (\d+) \| (\d+) \| \*\*(-?\d+)\*\* \| (\d+) \| ([\d.]+) \| \d+% \| (\d+) \|"
    cpu_rows = [re.fullmatch(row_shape, line) for line in lines[start + 4 : start + 7]]
    assert all(cpu_rows), lines[start:]
    assert [row[1] for row in cpu_rows if row] == [p.name for p in baseline.phases([], []) if p.path == "/v1/sentiment"]
    for row in cpu_rows:
        assert row is not None
        server, model, serving, loop, mean_batch, theirs = (float(row[i]) for i in range(2, 8))
        assert 0 < model < server and 0 < loop < server and mean_batch >= 1 and theirs > 0
        assert serving < server  # a median of each round's own difference, near server - model
