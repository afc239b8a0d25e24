"""export/quantize.py on the committed models: derived INT8 graphs, stamped, checked by parity."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from export import quantize as q
from service.model_card import load_model_card
from service.onnx_session import SOURCE_SHA256_KEY, StaleGraphError, graph_path, open_session
from service.runners import SentimentRunner, load_runner
from tests.conftest import DATA_DIR, model_repository, needs_data


def _ops(path: Path) -> Counter[str]:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


# the translator's embeddings and its encoder's GRUs stay fp32 (export/row_int8.py), so its encoder,
# mostly GRU and embedding, barely shrinks; its decoder gains tables of the embedding's products
@pytest.mark.parametrize(("name", "graph", "quantized_op", "size_ratio"), [
    ("sentiment", "model", "DynamicQuantizeLSTM", 0.6),
    ("translate-en-de", "encoder", "MatMulIntegerToFloat", 1.0),
    ("translate-en-de", "decoder_step", "MatMulIntegerToFloat", 0.9),
])
def test_derived_graphs_are_quantized_stamped_and_smaller(int8_repo: Path, name: str, graph: str,
                                                         quantized_op: str, size_ratio: float) -> None:
    folder = int8_repo / name / "1"
    spec = load_model_card(folder / "model.json").graphs[graph]
    derived = graph_path(folder, spec, "int8")
    assert derived.name == spec.file.replace(".onnx", ".int8.onnx")
    assert q.stamp(derived) == spec.sha256
    assert _ops(derived)[quantized_op] > 0
    assert derived.stat().st_size < size_ratio * (folder / spec.file).stat().st_size
    assert not list(folder.glob(".*.tmp"))


def test_a_second_run_leaves_current_graphs_alone(int8_repo: Path) -> None:
    folder = int8_repo / "sentiment" / "1"
    derived = folder / "sentiment.int8.onnx"
    before = derived.stat().st_mtime_ns
    assert q.quantize(folder, None) is None
    assert derived.stat().st_mtime_ns == before


def test_a_graph_of_an_older_recipe_is_still_served_but_derived_again(tmp_path: Path) -> None:
    repo = model_repository(tmp_path / "models")
    folder = repo / "sentiment" / "1"
    q.quantize(folder, None)
    derived = folder / "sentiment.int8.onnx"
    assert _ops(derived)["DynamicQuantizeLSTM"] == 2  # one a layer: its directions fused
    model = onnx.load(str(derived))
    next(p for p in model.metadata_props if p.key == q.RECIPE_KEY).value = "1"
    onnx.save(model, str(derived))
    spec = load_model_card(folder / "model.json").graphs["model"]
    open_session(folder, spec, ["CPUExecutionProvider"], precision="int8")  # checked by parity when made
    assert q.quantize(folder, None) is not None
    assert q.stamp(derived, q.RECIPE_KEY) == q.RECIPE


def test_int8_runner_agrees_with_fp32_within_the_tolerance(int8_repo: Path) -> None:
    folder = int8_repo / "sentiment" / "1"
    fp32, int8 = (load_runner(folder, ["CPUExecutionProvider"], precision=p) for p in ("fp32", "int8"))
    assert isinstance(fp32, SentimentRunner) and isinstance(int8, SentimentRunner)
    assert int8.precision == "int8"
    texts = ["A gorgeous, witty, seductive movie.", "It's a dull, lifeless film that never finds its footing.",
             "not bad at all", "The plot is thin but the actors carry it with charm and wit."]
    ids = [fp32.tokenize(t) for t in texts]
    p32, p8 = fp32.run(ids), int8.run(ids)
    assert (p32.argmax(-1) == p8.argmax(-1)).all()
    assert np.abs(p32 - p8).max(-1).mean() <= q.TOLERANCE
    assert not np.allclose(p32, p8, atol=1e-7)  # really another graph


def test_a_graph_derived_from_another_fp32_graph_is_refused_and_derived_again(tmp_path: Path) -> None:
    repo = model_repository(tmp_path / "models")
    folder = repo / "sentiment" / "1"
    q.quantize(folder, None)  # the data-free probe, as at image build
    derived = folder / "sentiment.int8.onnx"
    model = onnx.load(str(derived))
    next(p for p in model.metadata_props if p.key == SOURCE_SHA256_KEY).value = "0" * 64
    onnx.save(model, str(derived))
    spec = load_model_card(folder / "model.json").graphs["model"]
    with pytest.raises(StaleGraphError, match=r"sentiment\.int8\.onnx: derived from another fp32 graph"):
        open_session(folder, spec, ["CPUExecutionProvider"], precision="int8")
    parity = q.quantize(folder, None)
    assert parity is not None and parity.ok() and "random token sequences" in parity.checked_on
    assert q.stamp(derived) == spec.sha256
    open_session(folder, spec, ["CPUExecutionProvider"], precision="int8")


def test_graphs_that_fail_parity_are_not_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = model_repository(tmp_path / "models") / "sentiment" / "1"
    monkeypatch.setattr(q, "TOLERANCE", 1e-9)
    with pytest.raises(q.ParityError, match="fail the parity check"):
        q.quantize(folder, None)
    assert not list(folder.glob("*int8*")) and not list(folder.glob(".*"))


def test_one_model_failing_does_not_stop_the_others(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`make int8` over models/*/*: one model of one's own that failed stopped the ones after it."""
    broken = model_repository(tmp_path / "a") / "sentiment" / "1"
    card = json.loads((broken / "model.json").read_text())
    card["graphs"]["model"]["sha256"] = "0" * 64
    (broken / "model.json").write_text(json.dumps(card))
    good = model_repository(tmp_path / "b") / "sentiment" / "1"
    with pytest.raises(SystemExit, match=re.escape(f"no INT8 graphs for {broken} (they serve fp32)")):
        q.main(["--model-dir", str(broken), str(good), "--builtin-probe"])
    assert "sha256 differs from model.json" in capsys.readouterr().err
    assert list(good.glob("*.int8.onnx")) and not list(broken.glob("*.int8.onnx"))


def test_the_translation_probe_without_data_is_real_sentences(tmp_path: Path) -> None:
    folder = model_repository(tmp_path / "models") / "translate-en-de" / "1"
    probe, checked_on = q.probe_inputs(folder, load_model_card(folder / "model.json"), None)
    assert len(probe) == len(q.PROBE_CAPTIONS) and "captions" in checked_on
    assert all(ids[-1] == 3 and 1 not in ids for ids in probe)  # </s>-terminated, no unknown subwords


@needs_data
def test_write_records_parity_and_quality_in_the_card(tmp_path: Path) -> None:
    folder = model_repository(tmp_path / "models") / "sentiment" / "1"
    q.main(["--model-dir", str(folder), "--data-dir", str(DATA_DIR), "--write"])
    card = load_model_card(folder / "model.json")
    assert card.precisions is not None
    entry = card.precisions["int8"]
    assert entry.graphs == {"model": "sentiment.int8.onnx"}
    assert entry.parity.agreement >= entry.parity.min_agreement
    assert entry.parity.mean_abs_diff <= entry.parity.tolerance
    assert "SST-2 dev" in entry.parity.checked_on
    assert entry.auto is q.AUTO["text-classification"] is True  # served by SEQSERVE_PRECISION=auto
    assert set(entry.metrics) == {"sst2_dev_accuracy", "sst2_test_accuracy"}
    assert abs(entry.metrics["sst2_test_accuracy"] - card.metrics["sst2_test_accuracy"]) <= 0.01
