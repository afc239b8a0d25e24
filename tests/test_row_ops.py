"""The row operations on the device (the in-memory ONNX graph, run with I/O binding) give exactly
what the numpy ones give, for every case: survivors only, joiners only, both; rows cut, kept or
zero-padded to the new width; repeated and reordered survivors (beams)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from service.runners.row_ops import (
    DecoderRows,
    DeviceRows,
    Encoded,
    HostRowPool,
    build_graph,
    gather_on_host,
    length_mask,
    source_width,
)

CASES = [(True, True), (True, False), (False, True)]


def _on_device(array: np.ndarray) -> ort.OrtValue:
    return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), "cpu", 0)


@pytest.mark.parametrize("case", CASES)
def test_the_graphs_are_valid_onnx(case: tuple[bool, bool]) -> None:
    model = onnx.load_from_string(build_graph(*case))
    onnx.checker.check_model(model, full_check=True)
    assert [o.name for o in model.graph.output] == ["states", "keys", "mask", "state"]


def test_device_rows_equal_host_rows() -> None:
    rng = np.random.default_rng(0)
    device = DeviceRows(["CPUExecutionProvider"], "cpu", 0)
    widths_seen = set()
    for _ in range(60):
        rows_n, width_old, joiners_n, width_new = (int(x) for x in rng.integers(1, 7, size=4))
        rows = DecoderRows(rng.normal(size=(rows_n, width_old, 3)).astype(np.float32),
                           rng.normal(size=(rows_n, width_old, 2)).astype(np.float32),
                           length_mask(rng.integers(1, width_old + 1, size=rows_n), width_old))
        state = rng.normal(size=(rows_n, 2, 4)).astype(np.float32)
        keep = rng.integers(0, rows_n, size=int(rng.integers(1, 6)))  # beams: repeats, any order
        lengths = rng.integers(1, width_new + 1, size=joiners_n)
        lengths[0] = width_new  # the encoder's width is its longest source
        joiners = Encoded(rng.normal(size=(joiners_n, width_new, 3)).astype(np.float32),
                          rng.normal(size=(joiners_n, width_new, 2)).astype(np.float32),
                          rng.normal(size=(joiners_n, 2, 4)).astype(np.float32), lengths.astype(np.int64))
        width = max(width_new, int(rng.integers(1, 8)))
        widths_seen.add((np.sign(width - width_old), np.sign(width - width_new)))
        on_device = (DecoderRows(*(_on_device(a) for a in (rows.states, rows.keys, rows.mask))), _on_device(state),
                     Encoded(_on_device(joiners.states), _on_device(joiners.keys), _on_device(joiners.init_state),
                             joiners.lengths))
        for survivors, joining in CASES:
            want_rows, want_state = gather_on_host(rows if survivors else None, state if survivors else None,
                                                   keep if survivors else None, joiners if joining else None, width)
            got_rows, got_state = device(on_device[0] if survivors else None, on_device[1] if survivors else None,
                                         keep if survivors else None, on_device[2] if joining else None, width)
            assert isinstance(got_state, ort.OrtValue) and isinstance(got_rows.states, ort.OrtValue)
            for want, got in ((want_rows.states, got_rows.states), (want_rows.keys, got_rows.keys),
                              (want_rows.mask, got_rows.mask), (want_state, got_state)):
                assert np.array_equal(want, got.numpy())  # type: ignore[union-attr]
    assert {(1, 1), (-1, 0), (0, 1), (1, 0)} <= widths_seen  # padded, cut and kept, both sides


def test_host_rows_pad_with_zeros_and_mask_by_length() -> None:
    rows = DecoderRows(np.ones((2, 2, 1), np.float32), np.ones((2, 2, 1), np.float32), np.ones((2, 2), np.float32))
    joiners = Encoded(np.ones((1, 3, 1), np.float32), np.ones((1, 3, 1), np.float32), np.ones((1, 1, 1), np.float32),
                      np.array([2]))
    out, state = gather_on_host(rows, np.arange(2, dtype=np.float32).reshape(2, 1, 1), np.array([1, 1, 0]), joiners, 3)
    assert out.mask.tolist() == [[1, 1, 0], [1, 1, 0], [1, 1, 0], [1, 1, 0]]
    assert out.states[:, :, 0].tolist() == [[1, 1, 0], [1, 1, 0], [1, 1, 0], [1, 1, 1]]
    assert state.ravel().tolist() == [1, 1, 0, 1]  # type: ignore[union-attr]



def test_the_host_pool_gives_what_fresh_arrays_give() -> None:
    """A running set through many joins and leaves (beams: rows repeated, reordered, counts
    changing; sources longer and shorter than the running rows): the pool's rows, rebuilt in place,
    equal the fresh arrays of ``gather_on_host`` bit for bit, whatever its memory held before."""
    rng = np.random.default_rng(1)
    pool = HostRowPool()
    serials = iter(range(10_000))
    source_lengths: dict[int, int] = {}
    members: list[tuple[int, int]] = []  # (serial, rows) in row order
    fresh: DecoderRows | None = None
    got: DecoderRows | None = None
    fresh_state: np.ndarray | None = None
    got_state: np.ndarray | None = None
    cases = set()
    for _ in range(300):
        keep_parts, survivors, offset = [], [], 0
        for serial, count in members:
            if rng.random() >= 0.3:  # stays, with 1-3 rows taken from any of its own
                new_count = int(rng.integers(1, 4)) if rng.random() < 0.3 else count
                keep_parts.append(offset + rng.integers(0, count, size=new_count))
                survivors.append((serial, new_count))
            offset += count
        joiners, joined = None, []
        joining = int(rng.integers(0 if survivors else 1, 4))
        if joining:
            lengths = rng.integers(1, 9, size=joining)
            joiners = Encoded(rng.normal(size=(joining, int(lengths.max()), 3)).astype(np.float32),
                              rng.normal(size=(joining, int(lengths.max()), 2)).astype(np.float32),
                              rng.normal(size=(joining, 2, 4)).astype(np.float32), lengths.astype(np.int64))
            for length in lengths.tolist():
                joined.append((next(serials), 1))
                source_lengths[joined[-1][0]] = length
        keep = np.concatenate(keep_parts) if keep_parts else np.zeros(0, np.int64)
        if not survivors and rng.random() < 0.5:
            pool.clear()  # as a lane does when its running set empties: its memory goes back
        members = survivors + joined
        width = max(source_lengths[serial] for serial, _ in members)
        owners = np.array([serial for serial, count in members for _ in range(count)], np.int64)
        fresh, fresh_state = gather_on_host(fresh if survivors else None, fresh_state if survivors else None,
                                            keep if survivors else None, joiners, width)
        got, got_state = pool.gather(got_state if survivors else None, keep, owners, joiners, width)
        for want, have in ((fresh.states, got.states), (fresh.keys, got.keys), (fresh.mask, got.mask),
                           (fresh_state, got_state)):
            assert np.array_equal(want, have)  # type: ignore[arg-type]
        cases.add((bool(survivors), joiners is not None))
    assert cases == {(True, True), (True, False), (False, True)}


def test_the_source_width_is_the_longest_rounded_up_to_a_multiple_of_four() -> None:
    assert [source_width(n) for n in (0, 1, 3, 4, 5, 8, 9, 30)] == [4, 4, 4, 4, 8, 8, 12, 32]


def test_attention_s_weighted_sum_keeps_its_bits_at_every_width_the_rule_gives() -> None:
    """ONNX Runtime's MatMul as the decoder step runs it (weights [rows, 1, S] @ states [rows, S, D]):
    with S a multiple of 4, more zero padding leaves every bit; with S as it comes, it does not."""
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["weights", "states"], ["context"])], "attention",
        [onnx.helper.make_tensor_value_info("weights", onnx.TensorProto.FLOAT, ["rows", 1, "S"]),
         onnx.helper.make_tensor_value_info("states", onnx.TensorProto.FLOAT, ["rows", "S", 384])],
        [onnx.helper.make_tensor_value_info("context", onnx.TensorProto.FLOAT, None)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
                                   .SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)

    def context(weights: np.ndarray, states: np.ndarray, width: int) -> np.ndarray:
        padded_w = np.zeros((len(weights), 1, width), np.float32)
        padded_w[..., :weights.shape[-1]] = weights
        padded_s = np.zeros((len(states), width, 384), np.float32)
        padded_s[:, :states.shape[1]] = states
        return np.asarray(session.run(None, {"weights": padded_w, "states": padded_s})[0])

    moved = {"rule": 0, "as it comes": 0}
    for length in range(1, 30):
        weights = rng.dirichlet(np.ones(length), (8, 1)).astype(np.float32)
        states = np.tanh(rng.normal(0, 1, (8, length, 384))).astype(np.float32)
        for longer in (1, 3, 4, 9):
            moved["rule"] += not np.array_equal(context(weights, states, source_width(length)),
                                                context(weights, states, source_width(length + longer)))
            moved["as it comes"] += not np.array_equal(context(weights, states, length),
                                                       context(weights, states, length + longer))
    assert moved["rule"] == 0
    assert moved["as it comes"] > 0
