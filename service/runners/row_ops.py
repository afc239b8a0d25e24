"""Row operations of the decoder's running set: when requests join or leave, the survivors' rows
(encoder states, keys, source mask, decoder state) are gathered, cut or zero-padded to the new
source width, and the joiners' freshly encoded rows appended.

Two implementations with one signature (``RowGather``), and a third for the decode lanes:
- ``gather_on_host``: numpy, for values that live on the host (the CPU provider without I/O binding);
- ``HostRowPool``: the same rows, bit for bit, in memory a decode lane keeps and rebuilds in place
  (service/decode_scheduler.py): only the rows whose request changes are copied;
- ``DeviceRows``: a small ONNX graph built in memory at load (Gather on the rows, Slice and Pad on the
  source axis, Concat with the joiners, the joiners' mask from their lengths), run through ONNX
  Runtime with I/O binding on the decoder's own provider, so that under CUDA the rows never leave
  the device: only the row indices and the joiners' lengths go there. The committed model graphs
  stay untouched and no extra file is shipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

import numpy as np
import onnxruntime as ort

from service.onnx_session import Provider, session_options
from service.runners.gil_held import positions, put_rows, stack_rows, take_rows

Tensor: TypeAlias = np.ndarray | ort.OrtValue  # a host array, or a value on the inference device

_OPSET = 17
_IR_VERSION = 8  # the lowest that opset 17 allows: every ONNX Runtime the service supports reads it


@dataclass
class DecoderRows:
    """Encoder side of the rows being decoded (numpy, or OrtValues on the device)."""

    states: Tensor  # [R, S, E]
    keys: Tensor  # [R, S, A]
    mask: Tensor  # [R, S] float32, 1 on real source tokens


@dataclass
class Encoded:
    """The encoder's outputs for a batch of sources (numpy, or OrtValues on the device)."""

    states: Tensor  # [N, S, E] float32
    keys: Tensor  # [N, S, A] float32
    init_state: Tensor  # [N, layers, H] float32
    lengths: np.ndarray  # [N] int64, on the host


# the decoder's source width is a multiple of this: ONNX Runtime's fp32 MatMul over the source axis
# (attention's weighted sum of the encoder states) adds the last few positions in another order
# when that axis is not a multiple of 4, so a row's context moved in its last bit with the longest
# source in its batch; INT8's quantizing turned that into another word in 1 of 1,000 val sentences
# (streamed against not). Zero padding up to the next multiple adds exact zeros.
SOURCE_WIDTH_MULTIPLE = 4


def source_width(longest: int) -> int:
    """The source width for rows whose longest source has ``longest`` positions (at least 1)."""
    return -(-max(longest, 1) // SOURCE_WIDTH_MULTIPLE) * SOURCE_WIDTH_MULTIPLE


def length_mask(lengths: np.ndarray, width: int) -> np.ndarray:
    """[N, width] float32, 1 on each source's real tokens."""
    return (positions(width)[None, :] < lengths[:, None]).astype(np.float32)


class RowGather(Protocol):
    def __call__(self, rows: DecoderRows | None, state: Tensor | None, keep: np.ndarray | None,
                 joiners: Encoded | None, width: int) -> tuple[DecoderRows, Tensor]: ...


def _take(array: np.ndarray, rows: np.ndarray | None, width: int) -> np.ndarray:
    """``array[rows]`` (all rows if None) cut or zero-padded to ``width`` source positions (axis 1)."""
    picked = array if rows is None else array[rows]
    if picked.shape[1] >= width:
        return np.ascontiguousarray(picked[:, :width])
    out = np.zeros((len(picked), width, *picked.shape[2:]), dtype=picked.dtype)
    out[:, : picked.shape[1]] = picked
    return out


def _join(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def gather_on_host(rows: DecoderRows | None, state: Tensor | None, keep: np.ndarray | None,
                   joiners: Encoded | None, width: int) -> tuple[DecoderRows, Tensor]:
    """The new running set's rows: ``rows`` and ``state`` picked by ``keep`` (the survivors'
    parent rows), then the joiners' rows, all at ``width`` source positions."""
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    states: list[np.ndarray] = []
    if rows is not None:
        assert isinstance(state, np.ndarray) and keep is not None
        parts.append(tuple(_take(np.asarray(a), keep, width) for a in (rows.states, rows.keys, rows.mask)))  # type: ignore[arg-type]
        states.append(state[keep])
    if joiners is not None:
        assert isinstance(joiners.states, np.ndarray) and isinstance(joiners.keys, np.ndarray)
        parts.append((_take(joiners.states, None, width), _take(joiners.keys, None, width),
                      length_mask(joiners.lengths, width)))
        states.append(np.asarray(joiners.init_state))
    if not parts:
        raise ValueError("a gather needs survivors or joiners")
    enc = [_join([p[i] for p in parts]) for i in range(3)]
    return DecoderRows(enc[0], enc[1], enc[2]), _join(states)


class HostRowPool:
    """A lane's running rows on the host, in memory it reuses, rebuilt in place.

    ``gather_on_host`` builds every array anew at each join or leave: the survivors' rows picked
    (a copy), then joined with the joiners' (a second copy), in fresh allocations. At 64 greedy
    clients membership changes at nearly every step, and those copies took ~13% of a decode lane's
    time (py-spy). Here each row remembers whose encoder outputs it holds (``owners``, a request's
    serial number; every row of a request holds the same ones), so a rebuild copies only the rows
    whose owner changes: a row that stays in place costs nothing, the joiners' rows are written
    once. The source width stays exactly the longest member's, as in ``gather_on_host`` (the
    decoder's additive attention costs in proportion to it, and the answers stay bit for bit
    those of the fresh arrays): when it changes, the rows are copied once into a second area of
    the same memory, laid out for the new width.
    """

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """No rows: the memory goes back (a lane with nothing to decode holds none, as ONNX
        Runtime's arena is off so that a burst of long sources does not stay resident)."""
        # two areas of flat memory, the rows laid out in one at a time: states, keys, mask
        self._areas: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = [
            (np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32))] * 2
        self._area = 0
        self._views = (np.zeros((0, 0, 0), np.float32), np.zeros((0, 0, 0), np.float32), np.zeros((0, 0), np.float32))
        self._owners = np.zeros(0, np.int64)  # per row: whose encoder outputs it holds (-1: nobody's)

    def gather(self, state: np.ndarray | None, keep: np.ndarray, owners: np.ndarray, joiners: Encoded | None,
               width: int) -> tuple[DecoderRows, np.ndarray]:
        """The new running set's rows at ``width`` source positions: first the survivors', new row
        ``i`` taking old row ``keep[i]`` (its state row, and a row holding its request's encoder
        outputs), then the joiners'. ``owners`` names each new row's request (survivors then
        joiners). Returns views of the pool's memory: valid until the next ``gather``."""
        kept, total = len(keep), len(owners)
        capacity, laid_width = self._views[2].shape
        fits = total <= capacity and width == laid_width
        moving = np.flatnonzero(self._owners[:kept] != owners[:kept]) if fits else keep
        if not fits or 2 * len(moving) > kept:
            # a new width, more rows, or most rows moving (beams behind a leaver): one copy of
            # every survivor's row into the other area
            self._lay_out(keep, total, width, joiners)
        elif len(moving):
            sources = keep[moving]
            for rows in self._views:
                put_rows(rows, moving, rows, sources)
        self._owners[:total] = owners
        states, keys, mask = self._views
        parts = [] if state is None else [take_rows(state, keep)]
        if joiners is not None:
            assert isinstance(joiners.states, np.ndarray) and isinstance(joiners.keys, np.ndarray)
            joining, joined = range(kept, total), range(total - kept)
            put_rows(states, joining, np.ascontiguousarray(joiners.states), joined)  # zero-padded to the width
            put_rows(keys, joining, np.ascontiguousarray(joiners.keys), joined)
            put_rows(mask, joining, length_mask(joiners.lengths, width), joined)
            parts.append(np.ascontiguousarray(joiners.init_state))
        if not parts:
            raise ValueError("a gather needs survivors or joiners")
        return DecoderRows(states[:total], keys[:total], mask[:total]), stack_rows(parts)

    def _lay_out(self, keep: np.ndarray, total: int, width: int, joiners: Encoded | None) -> None:
        """The rows laid out anew for ``width`` source positions (in the other area, made anew if it
        is too small for ``total`` rows or far too big), the survivors' rows (``keep``) copied into their new places:
        cut, or zero-padded, to the new width."""
        old = self._views
        shaped = old[:2] if len(keep) else (joiners.states, joiners.keys)  # type: ignore[union-attr]
        dims, dtype = [a.shape[2] for a in shaped], shaped[0].dtype
        self._area = 1 - self._area
        areas = self._areas[self._area]
        capacity = max(2 * total, 16)
        # made anew when too small, or when over 4x what these rows want (a long source has left)
        if not total * width <= len(areas[2]) <= 4 * capacity * width:
            areas = (np.empty(capacity * width * dims[0], dtype), np.empty(capacity * width * dims[1], dtype),
                     np.empty(capacity * width, np.float32))
            self._areas[self._area] = areas
        capacity = len(areas[2]) // width
        self._views = (areas[0][: capacity * width * dims[0]].reshape(capacity, width, dims[0]),
                       areas[1][: capacity * width * dims[1]].reshape(capacity, width, dims[1]),
                       areas[2][: capacity * width].reshape(capacity, width))
        owners = np.full(capacity, -1, np.int64)
        for rows, before in zip(self._views, old, strict=True):  # cut, or zero-padded, to the new width
            put_rows(rows, range(len(keep)), before, keep)
        self._owners = owners


# --- the device graph -----------------------------------------------------------------------
def build_graph(survivors: bool, joiners: bool) -> bytes:
    """The row-operations graph for one case (rows kept, rows joining, or both), serialised.

    Inputs: ``old_states/old_keys/old_mask/old_state`` and ``keep`` [K] (survivors), ``new_states/
    new_keys/new_state`` and ``new_lengths`` [J] (joiners), ``width`` [1]. Outputs ``states, keys,
    mask, state`` with K + J rows and ``width`` source positions. Separate graphs per case keep
    zero-row tensors out of the device kernels.
    """
    from onnx import TensorProto, helper  # needed only where rows live on a device

    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    nodes: list[object] = []
    inputs = [helper.make_tensor_value_info("width", i64, [1])]
    consts = {"zero": [0], "one_axis": [1], "pad3": [0, 0, 0, 0], "pad2": [0, 0, 0], "tail3": [0]}
    initializers = [helper.make_tensor(name, i64, [len(v)], v) for name, v in consts.items()]
    initializers += [helper.make_tensor("start", i64, [], [0]), helper.make_tensor("step", i64, [], [1])]

    def node(op: str, ins: Sequence[str], out: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, list(ins), [out], **attrs))
        return out

    def fit(x: str, rank: int, tag: str) -> str:
        """x [R, S, ...] -> [R, width, ...]: cut to width, then zero-pad up to it."""
        cut = node("Slice", [x, "zero", "width", "one_axis"], f"{tag}_cut")
        have = node("Shape", [cut], f"{tag}_have", start=1, end=2)
        short = node("Sub", ["width", have], f"{tag}_short")
        parts = ["pad3", short, "tail3"] if rank == 3 else ["pad2", short]
        pads = node("Concat", parts, f"{tag}_pads", axis=0)
        return node("Pad", [cut, pads], f"{tag}_fit", mode="constant")

    def value(name: str, elem: int, rank: int) -> str:
        dims = [f"{name}_d{i}" for i in range(rank)]
        inputs.append(helper.make_tensor_value_info(name, elem, dims))
        return name

    sides: list[dict[str, str]] = []
    if survivors:
        keep = value("keep", i64, 1)
        picked = {k: node("Gather", [value(f"old_{k}", f32, r), keep], f"old_{k}_rows", axis=0)
                  for k, r in (("states", 3), ("keys", 3), ("mask", 2), ("state", 3))}
        sides.append({"states": fit(picked["states"], 3, "old_states"), "keys": fit(picked["keys"], 3, "old_keys"),
                      "mask": fit(picked["mask"], 2, "old_mask"), "state": picked["state"]})
    if joiners:
        lengths = node("Unsqueeze", [value("new_lengths", i64, 1), "one_axis"], "new_lengths_col")
        limit = node("Squeeze", ["width", "zero"], "width_scalar")
        positions = node("Unsqueeze", [node("Range", ["start", limit, "step"], "positions"), "zero"], "positions_row")
        mask = node("Cast", [node("Less", [positions, lengths], "new_real")], "new_mask", to=f32)
        sides.append({"states": fit(value("new_states", f32, 3), 3, "new_states"),
                      "keys": fit(value("new_keys", f32, 3), 3, "new_keys"),
                      "mask": mask, "state": value("new_state", f32, 3)})
    if not sides:
        raise ValueError("a row-operations graph needs survivors or joiners")
    outputs = []
    for key, rank in (("states", 3), ("keys", 3), ("mask", 2), ("state", 3)):
        parts = [side[key] for side in sides]
        node("Concat", parts, key, axis=0) if len(parts) > 1 else node("Identity", parts, key)
        outputs.append(helper.make_tensor_value_info(key, f32, [f"out_{key}_d{i}" for i in range(rank)]))
    used = {name for n in nodes for name in n.input}  # type: ignore[attr-defined]
    initializers = [t for t in initializers if t.name in used]  # ORT warns about unused ones
    graph = helper.make_graph(nodes, "seqserve_row_ops", inputs, outputs, initializers)  # type: ignore[arg-type]
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="seqserve")
    model.ir_version = _IR_VERSION
    return bytes(model.SerializeToString())


class DeviceRows:
    """``RowGather`` on the inference device: the row-operations graphs in ONNX Runtime with I/O
    binding, their outputs left where the decoder reads them."""

    def __init__(self, providers: list[Provider], device: str, device_id: int, intra_op_threads: int = 0,
                 profile: bool = False) -> None:
        self.device, self.device_id = device, device_id
        self.sessions: dict[tuple[bool, bool], ort.InferenceSession] = {}
        for case in ((True, True), (True, False), (False, True)):
            name = "row_ops_" + "_".join(n for n, on in zip(("survivors", "joiners"), case, strict=True) if on)
            options = session_options(intra_op_threads, name if profile else None)
            self.sessions[case] = ort.InferenceSession(build_graph(*case), sess_options=options, providers=providers)

    def named_sessions(self) -> dict[str, ort.InferenceSession]:
        return {"row_ops_" + "_".join(n for n, on in zip(("survivors", "joiners"), case, strict=True) if on): s
                for case, s in self.sessions.items()}

    def __call__(self, rows: DecoderRows | None, state: Tensor | None, keep: np.ndarray | None,
                 joiners: Encoded | None, width: int) -> tuple[DecoderRows, Tensor]:
        session = self.sessions[(rows is not None, joiners is not None)]
        binding = session.io_binding()
        feeds: dict[str, Tensor] = {"width": np.array([width], dtype=np.int64)}
        if rows is not None:
            assert state is not None and keep is not None
            feeds.update(old_states=rows.states, old_keys=rows.keys, old_mask=rows.mask, old_state=state,
                         keep=np.ascontiguousarray(keep, dtype=np.int64))
        if joiners is not None:
            feeds.update(new_states=joiners.states, new_keys=joiners.keys, new_state=joiners.init_state,
                         new_lengths=np.ascontiguousarray(joiners.lengths, dtype=np.int64))
        for name, value in feeds.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, value)
            else:
                binding.bind_ortvalue_input(name, value)
        for name in ("states", "keys", "mask", "state"):
            binding.bind_output(name, self.device, self.device_id)
        session.run_with_iobinding(binding)
        states, keys, mask, new_state = binding.get_outputs()
        return DecoderRows(states, keys, mask), new_state
