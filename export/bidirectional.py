"""Rewrite an exported LengthAwareBiRNN into ONNX's own bidirectional RNN operators.

PyTorch does not export packed sequences, so ``export/layers.py`` builds each bidirectional layer
from two unidirectional RNNs, the backward one on sequences reversed within their lengths
(Range/Where/GatherElements), and joins their outputs with a Concat. ONNX's LSTM and GRU do the
same in one operator, ``direction="bidirectional"`` with ``sequence_lens``: the backward direction
starts at each sequence's own last token, and positions past a sequence's length come out as
zeros (the models mask them anyway). On one ONNX Runtime thread the reversals, expands, transposes
and concats around the four RNNs took about a quarter of the classifier's time.

``fuse_bidirectional`` finds the layers by the module names the export gives them
(``/encoder/forward_rnns.K/LSTM`` and ``/encoder/backward_rnns.K/LSTM``, or GRU), stacks each pair's
weights into one operator, keeps the stack in ONNX's time-major layout between layers, and hands
the last layer's output to the rest of the graph under its old name; what fed only the old form
is dropped. The weights and the arithmetic of each direction are unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from export.row_int8 import live_nodes

RNN_OPS = ("LSTM", "GRU")
_LAYER = re.compile(r"^(?P<scope>.*)/(?P<side>forward|backward)_rnns\.(?P<index>\d+)/(?P<op>LSTM|GRU)$")


class NotABiRNN(ValueError):
    """The graph does not hold the structure LengthAwareBiRNN exports."""


@dataclass
class _Layer:
    forward: onnx.NodeProto
    backward: onnx.NodeProto
    output: str  # the Concat of both directions, [batch, time, 2 * hidden]


def fuse_bidirectional(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """``model`` with its bidirectional layers each one ONNX RNN operator; (new model, layers
    fused). A graph without such layers comes back as it is, with 0.

    The sequence lengths are the graph's one rank-1 integer input ([batch]). Raises NotABiRNN
    where the layers are not shaped as the export makes them.
    """
    if not any(_LAYER.match(node.name) for node in model.graph.node):
        return model, 0
    lengths = _lengths_input(model.graph)
    fused = onnx.ModelProto()
    fused.CopyFrom(model)
    graph = fused.graph
    producers = {out: node for node in graph.node for out in node.output}
    layers = _find_layers(graph, producers)
    initializers = {init.name: init for init in graph.initializer}
    first_input = _layer_input(producers, layers[0].forward)

    new_nodes: list[onnx.NodeProto] = [
        helper.make_node("Cast", [lengths], ["birnn/sequence_lens"], to=onnx.TensorProto.INT32, name="birnn/Cast"),
        helper.make_node("Transpose", [first_input], ["birnn/x0"], perm=[1, 0, 2], name="birnn/Transpose_in"),
        _constant("birnn/flat_shape", np.array([0, 0, -1], dtype=np.int64)),
    ]
    x = "birnn/x0"
    for index, layer in enumerate(layers):
        stacked = [_stack(initializers, graph, layer.forward.input[i], layer.backward.input[i], f"birnn/{index}/{part}")
                   for i, part in ((1, "W"), (2, "R"), (3, "B"))]
        attributes = {a.name: helper.get_attribute_value(a) for a in layer.forward.attribute}
        attributes["direction"] = "bidirectional"
        op = layer.forward.op_type
        y = f"birnn/{index}/Y"
        new_nodes.append(helper.make_node(op, [x, *stacked, "birnn/sequence_lens"], [y],
                                          name=f"birnn/{index}/{op}", **attributes))
        # [time, 2, batch, hidden] -> [time, batch, 2 * hidden]: forward then backward, as the Concat had it
        last = index == len(layers) - 1
        perm = [2, 0, 1, 3] if last else [0, 2, 1, 3]  # the last layer goes back to batch-major
        new_nodes.append(helper.make_node("Transpose", [y], [f"birnn/{index}/Yt"], perm=perm,
                                          name=f"birnn/{index}/Transpose"))
        x = layer.output if last else f"birnn/{index}/out"
        new_nodes.append(helper.make_node("Reshape", [f"birnn/{index}/Yt", "birnn/flat_shape"], [x],
                                          name=f"birnn/{index}/Reshape"))

    old_outputs = {layer.output for layer in layers}
    kept = [node for node in graph.node if not set(node.output) & old_outputs]
    # the new nodes go where the first layer's input is ready: right after its producer
    at = next(i for i, node in enumerate(kept) if first_input in node.output) + 1 if first_input in producers else 0
    nodes = live_nodes(kept[:at] + new_nodes + kept[at:], {output.name for output in graph.output})
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in nodes for name in node.input}
    for init in [init for init in graph.initializer if init.name not in used]:
        graph.initializer.remove(init)
    return fused, len(layers)


def _lengths_input(graph: onnx.GraphProto) -> str:
    candidates = [i.name for i in graph.input
                  if i.type.tensor_type.elem_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
                  and len(i.type.tensor_type.shape.dim) == 1]
    if len(candidates) != 1:
        raise NotABiRNN(f"expected one rank-1 integer input (the lengths), found {candidates}")
    return candidates[0]


def _find_layers(graph: onnx.GraphProto, producers: dict[str, onnx.NodeProto]) -> list[_Layer]:
    pairs: dict[int, dict[str, onnx.NodeProto]] = {}
    for node in graph.node:
        match = _LAYER.match(node.name)
        if match and node.op_type in RNN_OPS:
            pairs.setdefault(int(match["index"]), {})[match["side"]] = node
    if not pairs or sorted(pairs) != list(range(len(pairs))):
        raise NotABiRNN("no forward_rnns.K / backward_rnns.K layers numbered from 0")
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    layers = []
    for index in range(len(pairs)):
        pair = pairs[index]
        if set(pair) != {"forward", "backward"}:
            raise NotABiRNN(f"layer {index} lacks a direction")
        forward, backward = pair["forward"], pair["backward"]
        for node in (forward, backward):
            if len(node.input) > 4 and node.input[4]:
                raise NotABiRNN(f"{node.name} already has sequence_lens")
            # the fused operator starts from zeros, as the export's RNNs do (ConstantOfShape, value 0)
            for state in node.input[5:]:
                if state and not _zeros(producers.get(state)):
                    raise NotABiRNN(f"{node.name} starts from a state other than zeros ({state})")
            if _attribute(node, "direction", b"forward") != b"forward":
                raise NotABiRNN(f"{node.name} is not a forward RNN")
        layers.append(_Layer(forward, backward, _join_of(forward, consumers)))
    return layers


def _join_of(forward: onnx.NodeProto, consumers: dict[str, list[onnx.NodeProto]]) -> str:
    """The Concat that joins this layer's directions: reached from the forward RNN's output
    through its Squeeze and Transpose."""
    name = forward.output[0]
    for _ in range(4):
        users = consumers.get(name, [])
        if len(users) != 1:
            break
        if users[0].op_type == "Concat":
            return str(users[0].output[0])
        name = users[0].output[0]
    raise NotABiRNN(f"no Concat after {forward.name}")


def _layer_input(producers: dict[str, onnx.NodeProto], forward: onnx.NodeProto) -> str:
    """The first layer's [batch, time, features] input: what its forward RNN's Transpose reads."""
    transpose = producers.get(forward.input[0])
    if transpose is None or transpose.op_type != "Transpose":
        raise NotABiRNN(f"{forward.name} does not read a Transpose")
    return str(transpose.input[0])


def _stack(initializers: dict[str, onnx.TensorProto], graph: onnx.GraphProto, forward: str, backward: str,
           name: str) -> str:
    arrays = []
    for tensor in (forward, backward):
        if tensor not in initializers:
            raise NotABiRNN(f"{tensor} is not an initializer")
        arrays.append(numpy_helper.to_array(initializers[tensor]))
    graph.initializer.append(numpy_helper.from_array(np.concatenate(arrays, axis=0), name))
    return name


def _zeros(node: onnx.NodeProto | None) -> bool:
    if node is None or node.op_type != "ConstantOfShape":
        return False
    value = _attribute(node, "value", None)
    return value is None or not numpy_helper.to_array(value).any()  # type: ignore[arg-type]


def _constant(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name), name=name)


def _attribute(node: onnx.NodeProto, name: str, default: object) -> object:
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default
