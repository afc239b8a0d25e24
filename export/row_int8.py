"""INT8 by rows: a graph's large constant-weight products as u8 x s8 integer products, a row's
result independent of the other rows in its batch.

Each such product ``x @ W`` (a MatMul or Gemm by a constant weight, the bias Add after it) becomes:

- ``W`` as int8, symmetric, one scale per output column, fixed at derivation;
- ``x`` quantized at run time **one row at a time** (each vector along its last axis): its own
  scale ``max|row| / 127``, or a fixed 1/127 where ``x`` is known to lie in [-1, 1] (_bounded),
  rounded to uint8 around a zero point of 128;
- ``MatMulIntegerToFloat`` (ONNX Runtime's fused integer product: int32 sums, then the row's and
  the column's scales).

The integer sums are exact and no scale is shared between rows (``quantize_dynamic`` takes one
activation scale per batch tensor, and ``MatMulNBits`` takes different kernels by batch size).
uint8 activations are what ONNX Runtime's fast integer kernels take (AVX-512 VNNI, AMX); int8 x
int8 falls back to a slow reference path.

Also rewritten:
- a GRU that runs one time step (its input's time axis is 1 by shape inference, as in the
  translator's decoder step; ONNX Runtime has no quantized GRU): its two products and its gates;
- a product of embedding rows (a Gather from a constant matrix, alone or as a part of a Concat):
  an int8 table made once, looked up by token;
- a ReduceSum over axis 1: a running sum (CumSum) along it, which adds in one order whatever the
  batch (ONNX Runtime's ReduceSum, like its fp32 Gemm, takes another kernel for a batch of one).

GRUs over whole sequences (the encoder's) stay fp32, and so do products too small to pay for the
quantizing (the attention's query and energy).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# products with fewer weights than this stay fp32: quantizing a row costs a few small nodes
MIN_WEIGHTS = 65_536
ZERO_POINT = 128
MS_DOMAIN = "com.microsoft"
FIXED_SCALE = "row_int8.one_over_127"  # the scale of activations that lie in [-1, 1]


def _int8_by_columns(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``matrix`` [K, N] as symmetric int8 and its scale per column (float32 [N])."""
    scale = np.maximum(np.abs(matrix).max(axis=0), 1e-30) / 127
    return np.clip(np.round(matrix / scale), -127, 127).astype(np.int8), scale.astype(np.float32)


class _Rewriter:
    """Collects the new nodes and initializers while the graph's nodes are walked in order."""

    def __init__(self, graph: onnx.GraphProto, bounded: set[str], dims: dict[str, list[int | None]]) -> None:
        self.bounded = bounded
        self.dims = dims
        self.inits = {i.name: i for i in graph.initializer}
        self.producers = {out: node for node in graph.node for out in node.output}
        # small constants (axes, say) as exported: Constant nodes or initializers
        self.constants = {**{i.name: numpy_helper.to_array(i) for i in graph.initializer if len(i.dims) <= 1},
                          **{n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node
                             if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}}
        self.nodes: list[onnx.NodeProto] = []
        self.new_inits: list[onnx.TensorProto] = []
        self._count = 0
        self._quantized: dict[str, tuple[str, str]] = {}  # activation -> (uint8 rows, row scales)
        self.skipped: set[str] = set()  # outputs of the bias Adds folded into the product before them
        for name, value in ((FIXED_SCALE, np.float32(1 / 127)), ("row_int8.tiny", np.float32(1e-30)),
                            ("row_int8.zero_point", np.float32(ZERO_POINT)),
                            ("row_int8.u8_zero_point", np.uint8(ZERO_POINT)),
                            ("row_int8.axis0", np.array([0], np.int64)), ("row_int8.axis1_scalar", np.int64(1)),
                            ("row_int8.last", np.array([-1], np.int64)), ("row_int8.last_scalar", np.int64(-1)),
                            ("row_int8.axes01", np.array([0, 1], np.int64))):
            self.new_inits.append(numpy_helper.from_array(np.asarray(value), name))

    def name(self, hint: str) -> str:
        self._count += 1
        return f"row_int8/{hint}_{self._count}"

    def node(self, op: str, inputs: list[str], hint: str, domain: str = "", **attrs: Any) -> str:
        out = self.name(hint)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, domain=domain, **attrs))
        return out

    def constant(self, array: np.ndarray, hint: str) -> str:
        name = self.name(hint)
        self.new_inits.append(numpy_helper.from_array(array, name))
        return name

    def weight(self, name: str) -> np.ndarray | None:
        return numpy_helper.to_array(self.inits[name]) if name in self.inits else None

    def rows(self, x: str) -> tuple[str, str]:
        """``x`` as uint8 around ZERO_POINT, and its scale: 1/127 where ``x`` is known to lie in
        [-1, 1] (one QuantizeLinear), else each row's own (keeping its last axis, size 1)."""
        if x not in self._quantized:
            if x in self.bounded:
                u8 = self.node("QuantizeLinear", [x, FIXED_SCALE, "row_int8.u8_zero_point"], "u8")
                self._quantized[x] = (u8, FIXED_SCALE)
            else:
                peak = self.node("ReduceMax", [self.node("Abs", [x], "abs")], "peak", axes=[-1], keepdims=1)
                scale = self.node("Mul", [self.node("Max", [peak, "row_int8.tiny"], "peak"),
                                          FIXED_SCALE], "row_scale")
                shifted = self.node("Add", [self.node("Round", [self.node("Div", [x, scale], "scaled")], "round"),
                                            "row_int8.zero_point"], "shifted")
                self._quantized[x] = (self.node("Cast", [shifted], "u8", to=TensorProto.UINT8), scale)
        return self._quantized[x]

    def product(self, x: str, weight: np.ndarray, hint: str, bias: str = "", output: str = "") -> str:
        """``x @ weight (+ bias)`` ([..., K] @ [K, N], fp32) through the integer product, which applies
        the scales. A bias goes in too where the activation's scale is one number; with a scale per
        row it is a node of its own (ONNX Runtime 1.32's MatMulIntegerToFloat scales its bias input by
        a non-scalar A scale)."""
        q_weight, column_scale = _int8_by_columns(weight)
        rows, scale = self.rows(x)
        out = output or self.name(hint)
        fused = scale == FIXED_SCALE
        product = out if fused or not bias else self.name(hint)
        self.nodes.append(helper.make_node(
            "MatMulIntegerToFloat",
            [rows, self.constant(q_weight, f"{hint}_weight"), scale,
             self.constant(column_scale, f"{hint}_scale"), "row_int8.u8_zero_point", "",
             bias if fused else ""],
            [product], name=product, domain=MS_DOMAIN))
        if bias and not fused:
            self.nodes.append(helper.make_node("Add", [product, bias], [out], name=out))
        return out

    def lookup(self, x: str) -> tuple[np.ndarray, str, list[onnx.NodeProto]] | None:
        """(embedding matrix, token ids, the unit-axis nodes since) where ``x`` is rows of an
        embedding: a Gather from a constant matrix by a list of ids, then only given unit axes (not
        the last) and moved. Its products can be looked up in a table made once."""
        node, since = self.producers.get(x), list[onnx.NodeProto]()
        while node is not None and node.op_type in ("Unsqueeze", "Squeeze", "Transpose"):
            since.insert(0, node)
            node = self.producers.get(node.input[0])
        if node is None or node.op_type != "Gather" or node.input[0] not in self.inits:
            return None
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
        matrix = self.weight(node.input[0])
        ids_rank = len(self.dims.get(node.input[1]) or [None, None])
        if axis != 0 or matrix is None or matrix.ndim != 2 or ids_rank != 1 or not all(
                self._keeps_last_axis(n) for n in since if n.op_type == "Transpose"):
            return None
        return matrix, node.input[1], since

    def _keeps_last_axis(self, transpose: onnx.NodeProto) -> bool:
        rank = len(self.dims.get(transpose.output[0]) or [])
        perm = next((list(helper.get_attribute_value(a)) for a in transpose.attribute if a.name == "perm"),
                    list(range(rank))[::-1])  # no perm: the axes reversed
        return bool(perm) and perm[-1] == rank - 1

    def as_rows_of(self, rows: str, since: list[onnx.NodeProto]) -> str:
        """A table lookup's [ids, N] given the unit axes its embedding rows were given."""
        for node in since:
            rows = self.node(node.op_type, [rows, *node.input[1:]], "as_rows",
                             **{a.name: helper.get_attribute_value(a) for a in node.attribute})
        return rows

    def table(self, embedding: np.ndarray, ids: str, weight: np.ndarray, bias: np.ndarray | float, hint: str) -> str:
        """``embedding[ids] @ weight + bias`` as rows of a table made once (int8, a scale per column):
        one Gather and its dequantizing instead of quantizing the rows and a product."""
        q_table, column_scale = _int8_by_columns(embedding.astype(np.float64) @ weight + bias)
        rows = self.node("Gather", [self.constant(q_table, f"{hint}_table"), ids], f"{hint}_rows", axis=0)
        # Cast and Mul: DequantizeLinear by columns took ~4x their time on this CPU
        return self.node("Mul", [self.node("Cast", [rows], f"{hint}_float", to=TensorProto.FLOAT),
                                 self.constant(column_scale, f"{hint}_scale")], hint)

    def matmul(self, node: onnx.NodeProto, bias_add: onnx.NodeProto | None) -> bool:
        """A MatMul by a constant weight, with the bias Add that follows it when there is one."""
        weight = self.weight(node.input[1])
        if weight is None or weight.ndim != 2 or weight.size < MIN_WEIGHTS or node.input[0] in self.inits:
            return False
        bias = next(name for name in bias_add.input if name != node.output[0]) if bias_add is not None else ""
        output = bias_add.output[0] if bias_add is not None else node.output[0]
        if bias_add is not None:
            self.skipped.add(bias_add.output[0])
        if not self.split_by_parts(node.input[0], weight, bias, output):
            self.product(node.input[0], weight, "matmul", bias=bias, output=output)
        return True

    def split_by_parts(self, x: str, weight: np.ndarray, bias: str, output: str) -> bool:
        """``concat(parts) @ weight`` as the sum of each part's product where some parts are
        embeddings: those become table lookups, and the rest one product (with a fixed scale where
        they all lie in [-1, 1]). False where ``x`` is not such a Concat."""
        concat = self.producers.get(x)
        if concat is None or concat.op_type != "Concat":
            return False
        axis = next(helper.get_attribute_value(a) for a in concat.attribute if a.name == "axis")
        widths = [(self.dims.get(part) or [None])[-1] for part in concat.input]
        rank = len(self.dims.get(x) or [])
        lookups = [self.lookup(part) for part in concat.input]
        if axis not in (-1, rank - 1) or None in widths or sum(w or 0 for w in widths) != weight.shape[0] or not any(
                lookups):
            return False
        starts = np.cumsum([0, *widths])
        blocks = [weight[starts[i]:starts[i + 1]] for i in range(len(widths))]
        rest = [part for part, found in zip(concat.input, lookups, strict=True) if found is None]
        bias_value = self.weight(bias) if bias else np.zeros(weight.shape[1], np.float32)
        if bias_value is None:  # a bias computed at run time: not one to put in a table
            return False
        terms = [self.as_rows_of(self.table(found[0], found[1], block, bias_value if i == 0 else 0.0, "table"),
                                 found[2])
                 for i, (found, block) in enumerate((f, b) for f, b in zip(lookups, blocks, strict=True) if f)]
        if rest:
            joined = self.node("Concat", rest, "rest", axis=axis) if len(rest) > 1 else rest[0]
            if all(part in self.bounded for part in rest):
                self.bounded.add(joined)
            rest_weight = np.concatenate([b for f, b in zip(lookups, blocks, strict=True) if f is None])
            terms.append(self.product(joined, rest_weight, "matmul"))
        # the terms added up, the last Add writing ``output`` (an Identity where there is one term)
        total = terms[-1]
        for i, term in enumerate(terms[:-1]):
            name = output if i == len(terms) - 2 else self.name("sum")
            self.nodes.append(helper.make_node("Add", [total, term], [name], name=name))
            total = name
        if len(terms) == 1:
            self.nodes.append(helper.make_node("Identity", [total], [output], name=output))
        return True

    def gemm(self, node: onnx.NodeProto) -> bool:
        """A Gemm (a Linear layer as PyTorch exports it: ``x @ W^T + b``) by a constant weight. ONNX
        Runtime's fp32 Gemm takes another kernel for one row than for several, so a sentence's
        result would depend on whether it was encoded alone (the encoder's initial decoder state)."""
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = self.weight(node.input[1])
        bias = node.input[2] if len(node.input) > 2 else ""
        if (weight is None or weight.ndim != 2 or weight.size < MIN_WEIGHTS or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0
                or (bias and (bias not in self.inits or len(self.inits[bias].dims) != 1))):
            return False
        self.product(node.input[0], weight.T if attrs.get("transB", 0) else weight, "gemm", bias=bias,
                     output=node.output[0])
        return True

    def sum_in_order(self, node: onnx.NodeProto) -> bool:
        """A ReduceSum over axis 1 (the time axis: the encoder's mean of its states) as a running
        sum along it, keeping the last. ONNX Runtime's ReduceSum takes another kernel when the batch
        is one sentence, so its last bit, and through the quantized initial state a word now and
        then, would depend on whether a sentence was encoded alone; a running sum adds in one
        order, whatever the batch, and padding adds exact zeros."""
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axes = self.constants.get(node.input[1]) if len(node.input) > 1 else None
        if axes is None or axes.tolist() != [1] or attrs.get("noop_with_empty_axes", 0):
            return False
        running = self.node("CumSum", [node.input[0], "row_int8.axis1_scalar"], "running_sum")
        last = "row_int8.last" if attrs.get("keepdims", 1) else "row_int8.last_scalar"
        self.nodes.append(helper.make_node("Gather", [running, last], list(node.output), name=node.name, axis=1))
        return True

    def gru_step(self, node: onnx.NodeProto) -> bool:
        """One time step of a one-direction GRU (``linear_before_reset``=1), zrh gate order: its input's
        time axis is 1 by shape inference."""
        time_steps = (self.dims.get(node.input[0]) or [None])[0]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        inputs = list(node.input) + [""] * (6 - len(node.input))
        w, r, b = (self.weight(name) if name else None for name in inputs[1:4])
        if (time_steps != 1 or attrs.get("linear_before_reset") != 1 or attrs.get("direction", b"forward") != b"forward"
                or w is None or r is None or b is None or not inputs[5] or inputs[4]
                or "activations" in attrs or "clip" in attrs):
            return False
        hidden = int(attrs["hidden_size"])
        embedded = self.lookup(inputs[0])  # its table rows are [rows, 3H] as they are
        if embedded is not None:
            gx = self.table(embedded[0], embedded[1], w[0].T, b[0, :3 * hidden], "gru_input")
        else:
            x = self.node("Squeeze", [inputs[0], "row_int8.axis0"], "x")
            if inputs[0] in self.bounded:
                self.bounded.add(x)
            gx = self.product(x, w[0].T, "gru_input", bias=self.constant(b[0, :3 * hidden], "wb"))
        h = self.node("Squeeze", [inputs[5], "row_int8.axis0"], "h")
        if inputs[5] in self.bounded:
            self.bounded.add(h)
        gh = self.product(h, r[0].T, "gru_hidden", bias=self.constant(b[0, 3 * hidden:], "rb"))
        sizes = self.constant(np.array([2 * hidden, hidden], np.int64), "sizes")
        gx_zr, gx_n = (self.name("gx_split") for _ in range(2))
        gh_zr, gh_n = (self.name("gh_split") for _ in range(2))
        self.nodes.append(helper.make_node("Split", [gx, sizes], [gx_zr, gx_n], axis=-1))
        self.nodes.append(helper.make_node("Split", [gh, sizes], [gh_zr, gh_n], axis=-1))
        zr = self.node("Sigmoid", [self.node("Add", [gx_zr, gh_zr], "zr_in")], "zr")
        z, r_gate = self.name("z"), self.name("r")
        halves = self.constant(np.array([hidden, hidden], np.int64), "halves")
        self.nodes.append(helper.make_node("Split", [zr, halves], [z, r_gate], axis=-1))
        n = self.node("Tanh", [self.node("Add", [gx_n, self.node("Mul", [r_gate, gh_n], "r_hn")], "n_in")], "n")
        # (1 - z) * n + z * h, as n + z * (h - n)
        new_h = self.node("Add", [n, self.node("Mul", [z, self.node("Sub", [h, n], "h_minus_n")], "z_step")], "h_new")
        y, y_h = [*node.output, "", ""][:2]
        if y:
            self.nodes.append(helper.make_node("Unsqueeze", [new_h, "row_int8.axes01"], [y], name=node.name + "/y"))
        if y_h:
            self.nodes.append(helper.make_node("Unsqueeze", [new_h, "row_int8.axis0"], [y_h], name=node.name + "/y_h"))
        return True


def _dims(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Each tensor's dimensions where shape inference knows them (None: not a fixed number)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    return {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
            for v in list(inferred.graph.value_info) + list(inferred.graph.input)}


# operators whose output stays in [-1, 1] when their (data) inputs do
_KEEPS_BOUND = {"Gather", "Squeeze", "Unsqueeze", "Transpose", "Reshape", "Identity", "Slice", "Split", "Concat",
                "Flatten"}


def _bounded(model: onnx.ModelProto, inputs: set[str]) -> set[str]:
    """Tensors known to lie in [-1, 1]: the given graph inputs, the outputs of Tanh, Sigmoid and GRU
    (their states are tanh values mixed by gates), what only moves or picks such values, and a
    softmax-weighted sum of them (attention's context: a convex combination)."""
    bounded = set(inputs)
    producers = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        data = [name for name in node.input[:1 if node.op_type in ("Gather", "Reshape", "Slice", "Split",
                                                                    "Squeeze", "Unsqueeze") else None] if name]
        if (node.op_type in ("Tanh", "Sigmoid", "GRU")
                or (node.op_type in _KEEPS_BOUND and data and all(name in bounded for name in data))
                or (node.op_type == "MatMul" and node.input[1] in bounded and node.input[0] in producers
                    and producers[node.input[0]].op_type == "Softmax")):
            bounded.update(node.output)
    return bounded


def _bias_adds(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """MatMul output -> the Add that is its only consumer and adds a constant vector to it."""
    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    adds = {}
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(consumers.get(node.output[0], [])) != 1:
            continue
        (add,) = consumers[node.output[0]]
        other = [name for name in add.input if name != node.output[0]]
        if add.op_type == "Add" and len(other) == 1 and other[0] in inits and len(inits[other[0]].dims) == 1:
            adds[node.output[0]] = add
    return adds


def live_nodes(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """The nodes that lead to a graph output. What fed only a rewritten node (the embedding's moved
    rows before a table lookup, a Concat split into parts, a ReduceSum's axes) would still run, and
    ONNX Runtime warns of unused constants."""
    live, needed = [], set(outputs)
    for node in reversed(nodes):
        if any(out in needed for out in node.output):
            live.append(node)
            needed.update(name for name in node.input if name)
    return live[::-1]


def quantize_rows(model: onnx.ModelProto, bounded_inputs: Collection[str] = ()) -> tuple[onnx.ModelProto, int]:
    """The graph with its large products as integer products by rows; (new model, products rewritten).
    ``bounded_inputs``: graph inputs known to lie in [-1, 1] (GRU states, say), quantized with a fixed
    scale, as is whatever follows from them (_bounded)."""
    bias_adds = _bias_adds(model)
    rewriter = _Rewriter(model.graph, _bounded(model, set(bounded_inputs)), _dims(model))
    rewritten = 0
    for node in model.graph.node:
        if node.output[0] in rewriter.skipped:
            continue
        done = (rewriter.matmul(node, bias_adds.get(node.output[0])) if node.op_type == "MatMul"
                else rewriter.gemm(node) if node.op_type == "Gemm"
                else rewriter.sum_in_order(node) if node.op_type == "ReduceSum"
                else rewriter.gru_step(node) if node.op_type == "GRU" else False)
        if done:
            rewritten += 1
        else:
            rewriter.nodes.append(node)
    nodes = live_nodes(rewriter.nodes, {o.name for o in model.graph.output})
    used = {name for node in nodes for name in node.input}
    graph = helper.make_graph(
        nodes, model.graph.name, list(model.graph.input), list(model.graph.output),
        [i for i in list(model.graph.initializer) + rewriter.new_inits if i.name in used])
    out = helper.make_model(graph, opset_imports=[*model.opset_import, helper.make_opsetid(MS_DOMAIN, 1)],
                            producer_name=model.producer_name)
    out.ir_version = model.ir_version
    return out, rewritten
