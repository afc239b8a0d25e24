"""The sentiment ceiling: the classifier's own CPU per sentence by batch size, and the most one
worker thread can serve; its command on the committed model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from loadtests import sentiment_ceiling


def test_the_ceiling_is_the_cheapest_batch_of_similar_lengths() -> None:
    table = {(1, True): 800.0, (1, False): 800.0, (8, True): 250.0, (8, False): 500.0,
             (32, True): 400.0, (32, False): 900.0}
    out = sentiment_ceiling.lines({"int8": table}, [1, 8, 32])
    assert out[0] == "| batch | int8 similar lengths | int8 random lengths |"
    assert "| 8 | 250 | 500 |" in out
    assert out[-1].startswith("int8: one worker thread serves at most **4,000 sentences/s** (250 us of CPU a "
                              "sentence at batch 8")


def test_the_command_times_both_precisions(int8_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sentiment_ceiling.main(["--model-dir", str(int8_repo / "sentiment" / "1"), "--sizes", "1", "8",
                            "--seconds", "0.05", "--rounds", "1"])
    out = capsys.readouterr().out
    assert "| batch | int8 similar lengths | int8 random lengths | fp32 similar lengths | fp32 random lengths |" in out
    assert len(re.findall(r"(?m)^\| (1|8) \| [\d,]+ \| [\d,]+ \| [\d,]+ \| [\d,]+ \|$", out)) == 2
    for precision in ("int8", "fp32"):
        assert re.search(rf"(?m)^{precision}: one worker thread serves at most \*\*[\d,]+ sentences/s\*\*", out)
