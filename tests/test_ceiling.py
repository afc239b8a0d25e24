"""The ceiling model: what batching can give, from a step-cost curve (no model needed); its command
on the committed translator."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from loadtests import ceiling

ROWS = ceiling.ROWS


def test_a_step_cost_linear_in_rows_leaves_nothing_to_gain() -> None:
    steps = {r: 1.0 * r for r in ROWS}  # every row costs the same, however many share a step
    encodes = {r: 0.5 * r for r in ROWS}
    result = ceiling.compute(steps, encodes, [5, 10, 20, 40])
    # two lanes against one: 2x for many clients, and no difference between the schedulers
    assert result.iteration[32] / result.one_client == pytest.approx(2.0)
    assert result.iteration[64] / result.whole[64] == pytest.approx(1.0, rel=0.02)  # sampled batches


def test_a_flat_step_cost_rewards_full_batches() -> None:
    steps = {r: 1.0 for r in ROWS}  # a step costs the same for 1 or 64 rows (a GPU's regime)
    encodes = {r: 0.0 for r in ROWS}
    lengths = [5, 40]  # whole-request batches run as long as their longest request
    result = ceiling.compute(steps, encodes, lengths)
    assert result.iteration[64] / result.one_client == pytest.approx(64.0)
    assert 1.5 < result.iteration[64] / result.whole[64] < 1.8  # mean 22.5 steps against ~40
    assert "ideal ratios" in result.lines()[-1]


def test_the_command_prints_both_precisions_step_costs(int8_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ceiling.main(["--model-dir", str(int8_repo / "translate-en-de" / "1"), "--rounds", "1", "--source-len", "8"])
    out = capsys.readouterr().out
    assert "| rows | step fp32 | encoder fp32 | step int8 | encoder int8 |" in out
    assert len(re.findall(r"(?m)^\| \d+ \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+ \|$", out)) == len(ceiling.ROWS)
    assert re.search(r"step int8 / fp32: 1 rows [\d.]+x, 8 rows [\d.]+x, 32 rows [\d.]+x, 64 rows [\d.]+x", out)


def test_matrix_node_work_is_read_from_the_profiled_shapes() -> None:
    matmul = {"input_type_shape": [{"float": [28, 1, 256]}], "output_type_shape": [{"float": [28, 1, 6000]}]}
    assert ceiling._macs("MatMul", matmul) == 28 * 256 * 6000
    gru = {"input_type_shape": [{"float": [1, 28, 768]}, {"float": [1, 2304]}, {"float": [1, 28, 384]}],
           "output_type_shape": [{"float": [1, 1, 28, 384]}, {"float": [1, 28, 384]}]}
    assert ceiling._macs("GRU", gru) == 28 * 3 * 384 * (768 + 384)
    assert ceiling._macs("TopK", matmul) == 0


def test_the_command_profiles_a_decoder_step_node_by_node(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import COMMITTED_MODELS

    ceiling.main(["--model-dir", str(COMMITTED_MODELS / "translate-en-de" / "1"), "--ops", "4",
                  "--precision", "fp32", "--source-len", "8"])
    out = capsys.readouterr().out
    assert re.search(r"(?m)^\| /MatMul_1 \| MatMul \| [\d,]+ \| [\d.]+% \| [\d.]+ \|$", out)  # the vocabulary
    assert re.search(r"(?m)^\| /dec1/GRU \| GRU \| [\d,]+ \| [\d.]+% \| [\d.]+ \|$", out)
    assert re.search(r"matrix nodes: \d+% of the step at [\d.]+ GMAC/s", out)
    assert re.search(r"one thread: [\d.]+ GMAC/s", out)
