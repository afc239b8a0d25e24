"""export/bidirectional.py: the exported two-RNNs-a-layer form rewritten as ONNX's bidirectional
operators, on the committed graphs and on a freshly exported tiny model."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from export.bidirectional import NotABiRNN, fuse_bidirectional
from service.runners.sentiment import pad_batch
from tests.conftest import COMMITTED_MODELS

SENTIMENT = COMMITTED_MODELS / "sentiment" / "1" / "sentiment.onnx"
ENCODER = COMMITTED_MODELS / "translate-en-de" / "1" / "encoder.onnx"
DECODER = COMMITTED_MODELS / "translate-en-de" / "1" / "decoder_step.onnx"
# mixed lengths: the backward direction must start at each row's own last token, not at the padding
ROWS = [[5, 17, 230, 41, 9, 3000, 77, 12, 5, 8, 64, 101], [44, 9, 2], [700, 81, 19, 19, 6, 2], [31]]


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, rows: list[list[int]]) -> list[np.ndarray]:
    ids, lengths = pad_batch(rows)
    names = [i.name for i in session.get_inputs()]
    return list(session.run(None, {names[0]: ids, names[1]: lengths}))


def _real_positions(outputs: list[np.ndarray], lengths: list[int]) -> list[np.ndarray]:
    """[batch, time, ...] outputs cut to each row's length (padding's values are the caller's to mask)."""
    return [np.concatenate([o[i, :n].ravel() for i, n in enumerate(lengths)]) if o.ndim == 3 else o
            for o in outputs]


@pytest.mark.parametrize(("path", "op"), [(SENTIMENT, "LSTM"), (ENCODER, "GRU")])
def test_the_committed_graphs_give_the_same_numbers_with_half_the_rnn_nodes(path: Path, op: str) -> None:
    if not path.is_file():
        pytest.skip("no committed models")
    model = onnx.load(str(path))
    fused, layers = fuse_bidirectional(model)
    onnx.checker.check_model(fused)
    before, after = (Counter(node.op_type for node in m.graph.node) for m in (model, fused))
    assert layers == 2 and before[op] == 4 and after[op] == 2
    assert before["GatherElements"] == 4 and after["GatherElements"] == 0  # the reversals are gone
    for node in fused.graph.node:
        if node.op_type == op:
            assert helper.get_attribute_value(next(a for a in node.attribute if a.name == "direction")) \
                == b"bidirectional"
            assert node.input[4]  # sequence_lens
    lengths = [len(r) for r in ROWS]
    old = _real_positions(_run(_session(model), ROWS), lengths)
    new = _real_positions(_run(_session(fused), ROWS), lengths)
    for a, b in zip(old, new, strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
    assert [o.name for o in fused.graph.output] == [o.name for o in model.graph.output]


def test_a_row_reads_the_same_alone_as_beside_a_longer_one() -> None:
    if not SENTIMENT.is_file():
        pytest.skip("no committed models")
    session = _session(fuse_bidirectional(onnx.load(str(SENTIMENT)))[0])
    alone = _run(session, [ROWS[1]])[0]
    padded = _run(session, [ROWS[0], ROWS[1]])[0][1:]
    np.testing.assert_allclose(padded, alone, rtol=0, atol=1e-6)


def test_a_graph_without_such_layers_comes_back_unchanged() -> None:
    if not DECODER.is_file():
        pytest.skip("no committed models")
    model = onnx.load(str(DECODER))
    fused, layers = fuse_bidirectional(model)
    assert layers == 0 and fused is model


def _backward_renamed(node: onnx.NodeProto) -> None:
    if node.name == "/encoder/backward_rnns.1/LSTM":
        node.name = "/encoder/other.1/LSTM"


def _state_of_ones(node: onnx.NodeProto) -> None:
    if node.name == "/encoder/forward_rnns.0/ConstantOfShape":
        node.attribute[0].t.CopyFrom(onnx.numpy_helper.from_array(np.ones(1, dtype=np.float32)))


@pytest.mark.parametrize(("change", "message"), [
    (_backward_renamed, "layer 1 lacks a direction"),
    (_state_of_ones, "starts from a state other than zeros"),  # the fused operator starts from zeros
])
def test_a_graph_not_shaped_as_the_export_makes_it_is_refused(change: Callable[[onnx.NodeProto], None],
                                                               message: str) -> None:
    if not SENTIMENT.is_file():
        pytest.skip("no committed models")
    model = onnx.load(str(SENTIMENT))
    for node in model.graph.node:
        change(node)
    with pytest.raises(NotABiRNN, match=message):
        fuse_bidirectional(model)


def test_a_freshly_exported_model_keeps_the_form_it_rewrites(tiny_repo: Path) -> None:
    for path, op in ((tiny_repo / "sentiment" / "1" / "sentiment.onnx", "LSTM"),
                     (tiny_repo / "translate-en-de" / "1" / "encoder.onnx", "GRU")):
        fused, layers = fuse_bidirectional(onnx.load(str(path)))
        assert layers >= 1
        assert Counter(node.op_type for node in fused.graph.node)[op] == layers
