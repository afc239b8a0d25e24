"""A tied weight stored once: the graph computes the same, bit for bit, and rewrites see it as exported."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.tied_weights import (
    main,
    materialise_transposes,
    share_transposed_copies,
)
from service.model_card import load_model_card
from service.onnx_session import sha256_of
from tests.conftest import COMMITTED_MODELS

VOCAB, DIM = 300, 256


def _tied_graph(untied: np.ndarray | None = None) -> onnx.ModelProto:
    """Gather rows of E (the embedding) and multiply by E^T (the tied output layer), as exported:
    E^T a second initializer. ``untied``: a third matrix of E^T's shape that is not its transpose."""
    rng = np.random.default_rng(0)
    table = rng.standard_normal((VOCAB, DIM)).astype(np.float32)
    inits = [numpy_helper.from_array(table, "E"), numpy_helper.from_array(np.ascontiguousarray(table.T), "E_t")]
    nodes = [helper.make_node("Gather", ["E", "ids"], ["emb"]), helper.make_node("MatMul", ["emb", "E_t"], ["logits"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", VOCAB])]
    if untied is not None:
        inits.append(numpy_helper.from_array(untied, "other"))
        nodes.append(helper.make_node("MatMul", ["emb", "other"], ["other_logits"]))
        outputs.append(helper.make_tensor_value_info("other_logits", TensorProto.FLOAT, ["n", VOCAB]))
    graph = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"ids": np.array([4, 0, 299, 17], np.int64)})


def _initializers(model: onnx.ModelProto) -> dict[str, bytes]:
    return {i.name: numpy_helper.to_array(i).tobytes() for i in model.graph.initializer}


def test_a_transposed_copy_is_stored_once_and_computes_the_same_bit_for_bit() -> None:
    exported = _tied_graph()
    shared = onnx.ModelProto()
    shared.CopyFrom(exported)
    assert share_transposed_copies(shared) == VOCAB * DIM * 4
    onnx.checker.check_model(shared)
    assert set(_initializers(shared)) == {"E"}
    assert shared.graph.node[0].op_type == "Transpose"
    for got, expected in zip(_run(shared), _run(exported), strict=True):
        assert np.array_equal(got, expected)
    assert share_transposed_copies(shared) == 0  # nothing left to share


def test_materialising_gives_back_the_exported_initializers() -> None:
    exported = _tied_graph()
    model = onnx.ModelProto()
    model.CopyFrom(exported)
    share_transposed_copies(model)
    assert materialise_transposes(model) == 1
    assert _initializers(model) == _initializers(exported)
    assert "Transpose" not in [n.op_type for n in model.graph.node]
    assert np.array_equal(_run(model)[0], _run(exported)[0])


def test_a_matrix_of_the_transposed_shape_that_is_not_the_transpose_is_kept() -> None:
    other = np.random.default_rng(1).standard_normal((DIM, VOCAB)).astype(np.float32)
    model = _tied_graph(untied=other)
    share_transposed_copies(model)
    assert set(_initializers(model)) == {"E", "other"}


def test_an_initializer_that_is_also_a_graph_input_is_left_alone() -> None:
    model = _tied_graph()
    model.graph.input.append(helper.make_tensor_value_info("E_t", TensorProto.FLOAT, [DIM, VOCAB]))
    assert share_transposed_copies(model) == 0
    assert set(_initializers(model)) == {"E", "E_t"}


def test_the_committed_graphs_hold_no_transposed_copies() -> None:
    for path in sorted(COMMITTED_MODELS.glob("*/*/*.onnx")):
        if not path.name.endswith(".int8.onnx"):
            assert share_transposed_copies(onnx.load(str(path))) == 0, path


def test_the_command_rewrites_a_graph_exported_with_a_copy_into_the_committed_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = COMMITTED_MODELS / "translate-en-de" / "1"
    card = load_model_card(source / "model.json")
    for spec in card.graphs.values():
        shutil.copy(source / spec.file, tmp_path / spec.file)
    shutil.copy(source / "model.json", tmp_path / "model.json")
    # the decoder step as PyTorch exported it: E^T folded into an initializer of its own
    decoder = tmp_path / card.graphs["decoder_step"].file
    model = onnx.load(str(decoder))
    assert materialise_transposes(model) == 1
    onnx.save(model, str(decoder))
    assert sha256_of(decoder) != card.graphs["decoder_step"].sha256

    main(["--model-dir", str(tmp_path)])
    assert "6,144,000 bytes saved" in capsys.readouterr().out
    assert sha256_of(decoder) == card.graphs["decoder_step"].sha256  # the committed file, byte for byte
    assert load_model_card(tmp_path / "model.json") == card
