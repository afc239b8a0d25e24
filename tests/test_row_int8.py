"""export/row_int8.py: products as integer products by rows, GRU steps written out, rows independent."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from export.row_int8 import _bounded, quantize_rows
from service.model_card import load_model_card
from service.onnx_session import graph_path

HIDDEN, INPUTS, ROWS = 48, 40, 5


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _ops(model: onnx.ModelProto) -> Counter[str]:
    return Counter(node.op_type for node in model.graph.node)


def _gru_step_graph(rng: np.random.Generator) -> onnx.ModelProto:
    """One time step of a GRU as PyTorch exports it, then a Linear layer (MatMul + bias Add) on its output."""
    weights = {
        "W": rng.normal(0, 0.3, (1, 3 * HIDDEN, INPUTS)), "R": rng.normal(0, 0.3, (1, 3 * HIDDEN, HIDDEN)),
        "B": rng.normal(0, 0.1, (1, 6 * HIDDEN)), "out_w": rng.normal(0, 0.3, (HIDDEN, 2000)),
        "out_b": rng.normal(0, 0.1, (2000,))}
    nodes = [helper.make_node("GRU", ["x", "W", "R", "B", "", "h0"], ["y", "y_h"], hidden_size=HIDDEN,
                              linear_before_reset=1),
             helper.make_node("Squeeze", ["y_h", "axis0"], ["h"]),
             helper.make_node("MatMul", ["h", "out_w"], ["logits_raw"]),
             helper.make_node("Add", ["logits_raw", "out_b"], ["logits"])]
    graph = helper.make_graph(
        nodes, "step",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "rows", INPUTS]),
         helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, "rows", HIDDEN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]
        + [numpy_helper.from_array(np.array([0], np.int64), "axis0")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _feeds(rng: np.random.Generator, rows: int = ROWS) -> dict[str, np.ndarray]:
    return {"x": rng.normal(0, 1, (1, rows, INPUTS)).astype(np.float32),
            "h0": np.tanh(rng.normal(0, 1, (1, rows, HIDDEN))).astype(np.float32)}


def test_a_gru_step_and_a_linear_layer_become_integer_products_close_to_fp32() -> None:
    rng = np.random.default_rng(0)
    fp32 = _gru_step_graph(rng)
    int8, rewritten = quantize_rows(fp32, {"h0"})
    assert rewritten == 2
    assert _ops(int8)["GRU"] == 0 and _ops(int8)["MatMul"] == 0
    assert _ops(int8)["MatMulIntegerToFloat"] == 3  # the GRU's two products and the linear layer
    feeds = _feeds(rng)
    (y32, logits32), (y8, logits8) = _session(fp32).run(None, feeds), _session(int8).run(None, feeds)
    assert y8.shape == y32.shape == (1, 1, ROWS, HIDDEN)
    assert np.abs(y8 - y32).max() < 0.06  # a wrong gate or order gives ~0.5
    # the bias is added once, after the row scales (not scaled by them)
    assert np.abs(logits8 - logits32).max() < 0.05 * np.abs(logits32).max()
    assert not np.allclose(y8, y32, atol=1e-6)  # really another computation


def test_an_embedding_s_part_of_a_product_becomes_a_table_lookup() -> None:
    """``concat(state, embedding[ids]) @ W + b``: the state's product by rows, the embedding's rows of
    a table made once (the bias in it), added; the embedding's unit axis given to its rows too."""
    rng = np.random.default_rng(5)
    vocab, width, out = 300, 24, 1000
    nodes = [helper.make_node("Gather", ["embedding", "ids"], ["embedded"]),
             helper.make_node("Unsqueeze", ["embedded", "axis1"], ["embedded_1"]),
             helper.make_node("Concat", ["state", "embedded_1"], ["joined"], axis=-1),
             helper.make_node("MatMul", ["joined", "weight"], ["raw"]),
             helper.make_node("Add", ["raw", "bias"], ["y"])]
    graph = helper.make_graph(
        nodes, "readout",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["rows"]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, ["rows", 1, HIDDEN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", 1, out])],
        [numpy_helper.from_array(rng.normal(0, 1, (vocab, width)).astype(np.float32), "embedding"),
         numpy_helper.from_array(rng.normal(0, 0.3, (HIDDEN + width, out)).astype(np.float32), "weight"),
         numpy_helper.from_array(rng.normal(0, 0.1, out).astype(np.float32), "bias"),
         numpy_helper.from_array(np.array([1], np.int64), "axis1")])
    fp32 = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    int8, rewritten = quantize_rows(fp32, {"state"})
    assert rewritten == 1 and _ops(int8)["MatMulIntegerToFloat"] == 1 and _ops(int8)["MatMul"] == 0
    feeds = {"ids": rng.integers(0, vocab, ROWS),
             "state": np.tanh(rng.normal(0, 1, (ROWS, 1, HIDDEN))).astype(np.float32)}
    (y32,), (y8,) = _session(fp32).run(None, feeds), _session(int8).run(None, feeds)
    assert y8.shape == y32.shape == (ROWS, 1, out)
    assert np.abs(y8 - y32).max() < 0.02 * np.abs(y32).max()


def test_an_input_of_unknown_range_is_quantized_by_its_own_rows() -> None:
    """``x`` is unbounded here (not declared, not a tanh), so its rows take their own scales: a row
    a thousand times larger is as exact as a small one."""
    rng = np.random.default_rng(1)
    fp32 = _gru_step_graph(rng)
    int8, _ = quantize_rows(fp32, {"h0"})
    feeds = _feeds(rng)
    feeds["x"][0, 0] *= 1000
    feeds["x"][0, 1] /= 1000
    y32, y8 = (_session(m).run(["y"], feeds)[0] for m in (fp32, int8))
    assert np.abs(y8 - y32).max() < 0.06  # a wrong gate or order gives ~0.5


def test_a_row_gets_the_same_bits_alone_as_in_any_batch() -> None:
    rng = np.random.default_rng(2)
    int8 = _session(quantize_rows(_gru_step_graph(rng), {"h0"})[0])
    feeds = _feeds(rng, rows=37)
    together = int8.run(None, feeds)
    for start, stop in ((0, 1), (5, 6), (3, 11), (20, 37)):
        alone = int8.run(None, {k: v[:, start:stop] for k, v in feeds.items()})
        assert np.array_equal(alone[0], together[0][:, :, start:stop])
        assert np.array_equal(alone[1], together[1][start:stop])


def test_what_lies_in_minus_one_to_one_is_known_through_the_translator_step(int8_repo: Path) -> None:
    folder = int8_repo / "translate-en-de" / "1"
    step = onnx.load(str(folder / load_model_card(folder / "model.json").graphs["decoder_step"].file))
    bounded = _bounded(step, {"decoder_state", "encoder_states"})
    inputs = {node.name: node.input[0] for node in step.graph.node if node.op_type in ("GRU", "MatMul")}
    assert inputs["/MatMul_1"] in bounded  # the vocabulary's input: a tanh
    assert inputs["/dec2/GRU"] in bounded  # [s1; context]: a GRU state and a softmax-weighted sum of states
    assert inputs["/readout/MatMul"] not in bounded  # [s2; context; embedding]: the embedding is not
    assert inputs["/dec1/GRU"] not in bounded  # the embedding


def test_the_translator_step_gives_a_row_the_same_bits_whatever_its_batch_mates(int8_repo: Path) -> None:
    folder = int8_repo / "translate-en-de" / "1"
    spec = load_model_card(folder / "model.json").graphs["decoder_step"]
    int8 = _session(onnx.load(str(graph_path(folder, spec, "int8"))))
    rng = np.random.default_rng(3)
    rows, source = 29, 11
    feeds: dict[str, np.ndarray] = {"prev_tokens": rng.integers(4, 6000, rows), "parent_rows": np.arange(rows),
             "decoder_state": np.tanh(rng.normal(0, 1, (rows, 2, 384))).astype(np.float32),
             "encoder_states": np.tanh(rng.normal(0, 1, (rows, source, 384))).astype(np.float32),
             "encoder_keys": rng.normal(0, 0.3, (rows, source, 128)).astype(np.float32),
             "src_mask": (np.arange(source)[None] < rng.integers(1, source + 1, rows)[:, None]).astype(np.float32)}
    together = int8.run(None, feeds)
    for start, stop in ((0, 1), (7, 8), (2, 19)):
        part = {k: (np.arange(stop - start) if k == "parent_rows" else v[start:stop]) for k, v in feeds.items()}
        for whole, alone in zip(together, int8.run(None, part), strict=True):
            assert np.array_equal(whole[start:stop], alone)


def test_the_encoder_gives_a_sentence_the_same_outputs_alone_as_in_a_batch(int8_repo: Path) -> None:
    """fp32's Gemm and ReduceSum take other kernels for one sentence than for several, so the
    initial decoder state moves in its last bits; by rows and with a running sum it does not."""
    folder = int8_repo / "translate-en-de" / "1"
    spec = load_model_card(folder / "model.json").graphs["encoder"]
    rng = np.random.default_rng(4)
    moved = {}
    for precision, path in (("fp32", folder / spec.file), ("int8", graph_path(folder, spec, "int8"))):
        session = _session(onnx.load(str(path)))
        moved[precision] = 0
        for _ in range(20):
            lengths = rng.integers(3, 20, 6)
            batch = rng.integers(4, 6000, (6, int(lengths.max())))
            together = session.run(None, {"src_ids": batch, "src_lengths": lengths})
            for row in range(6):
                n = int(lengths[row])
                alone = session.run(None, {"src_ids": batch[row:row + 1, :n], "src_lengths": lengths[row:row + 1]})
                moved[precision] += not all(np.array_equal(np.asarray(whole)[row, :n] if whole.ndim == 3 else
                                                           np.asarray(whole)[row], one[0])
                                            for whole, one in zip(together[:2], alone[:2], strict=True))
                moved[precision] += not np.array_equal(np.asarray(together[2])[row], np.asarray(alone[2])[0])
    assert moved["int8"] == 0
    assert moved["fp32"] > 0  # what the Gemm and the sum are rewritten for


def test_sequence_grus_and_small_products_stay_fp32(int8_repo: Path) -> None:
    folder = int8_repo / "translate-en-de" / "1"
    card = load_model_card(folder / "model.json")
    encoder = onnx.load(str(graph_path(folder, card.graphs["encoder"], "int8")))
    step = onnx.load(str(graph_path(folder, card.graphs["decoder_step"], "int8")))
    # one bidirectional GRU a layer (export/bidirectional.py); the initial state's Gemm is by rows
    assert _ops(encoder)["GRU"] == 2 and _ops(encoder)["Gemm"] == 0
    assert _ops(encoder)["ReduceSum"] == 0 and _ops(encoder)["CumSum"] == 1  # the mean's sum, in order
    # products: the first GRU's state, the second GRU's input and state, the readout's states, the
    # vocabulary; the embedding's products (the first GRU's input, the readout's third) are tables
    assert _ops(step)["GRU"] == 0 and _ops(step)["MatMulIntegerToFloat"] == 5
    assert _ops(step)["MatMul"] == 3  # the attention's query, energy (too small to pay) and weighted sum
