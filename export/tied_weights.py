"""A tied weight stored once in an ONNX graph, and materialised again where a rewrite needs it.

The translator ties its output layer to its target embeddings (``hidden @ E^T``). PyTorch's
exporter folds ``E^T`` into a second initializer, so the decoder step carried the same 6.1 MB of
weights twice: once for the embedding's Gather, once, transposed, for the vocabulary's MatMul.

``share_transposed_copies`` keeps one copy and computes the other with a ``Transpose`` node of it.
The graph computes exactly what it did (a transpose moves values, it rounds nothing), and ONNX
Runtime folds the node back into a constant when it loads the graph (constant folding, every
optimisation level above none), so a session runs the same kernels on the same weights.

``materialise_transposes`` undoes it in memory for graph rewrites that look for products by a
constant initializer (export/row_int8.py, onnxruntime.quantization), so they see the graph
exactly as exported.

    python -m export.tied_weights --model-dir models/translate-en-de/1

rewrites a version's committed fp32 graphs that hold such copies (exported before this module) in
place (a copy is shared only where it equals the transpose exactly) and puts their new sha256 in
model.json. Needs onnx only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from export.cli import run
from service.model_card import load_model_card, write_model_card
from service.onnx_session import sha256_of


def matrices(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """A graph's 2-D initializers by name."""
    return {init.name: numpy_helper.to_array(init) for init in graph.initializer if len(init.dims) == 2}


def share_transposed_copies(model: onnx.ModelProto) -> int:
    """Replace each initializer that is exactly the transpose of another by a ``Transpose`` node
    of that other, under the same name (its consumers are unchanged). Returns the bytes saved."""
    graph = model.graph
    inputs = {value.name for value in graph.input}  # an initializer listed as an input too (an
    # older IR) is a default the caller may override: it stays an initializer
    arrays = {name: array for name, array in matrices(graph).items() if name not in inputs}
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for name, array in arrays.items():
        by_shape.setdefault(array.shape, []).append(name)
    copies: dict[str, str] = {}  # the transposed copy -> the matrix kept
    for name, array in arrays.items():
        if name in copies or name in copies.values():
            continue
        for other in by_shape.get(array.shape[::-1], []):
            if other != name and other not in copies and array.dtype == arrays[other].dtype \
                    and np.array_equal(array, arrays[other].T):
                copies[other] = name
                break
    if not copies:
        return 0
    kept = [init for init in graph.initializer if init.name not in copies]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    # the node's input is an initializer, so it can come first in the graph's (topological) order
    transposes = [helper.make_node("Transpose", [source], [copy], name=f"tied/{copy}", perm=[1, 0])
                  for copy, source in copies.items()]
    for position, node in enumerate(transposes):
        graph.node.insert(position, node)
    return sum(arrays[copy].nbytes for copy in copies)


def materialise_transposes(model: onnx.ModelProto) -> int:
    """Replace each ``Transpose`` of a 2-D initializer by an initializer holding its result.
    Returns how many were replaced."""
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    folded = [node for node in graph.node if node.op_type == "Transpose" and len(node.input) == 1
              and node.input[0] in inits and len(inits[node.input[0]].dims) == 2]
    for node in folded:
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [1, 0])
        array = numpy_helper.to_array(inits[node.input[0]]).transpose(perm)
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), node.output[0]))
        graph.node.remove(node)
    return len(folded)


def share_in_place(model_dir: Path) -> int:
    """Store each tied weight of a version's fp32 graphs once (see the module's docstring), and
    update model.json. Returns the bytes saved."""
    card_path = model_dir / "model.json"
    card = load_model_card(card_path)
    saved = 0
    for key, spec in card.graphs.items():
        path = model_dir / spec.file
        model = onnx.load(str(path))
        graph_saved = share_transposed_copies(model)
        if not graph_saved:
            print(f"{spec.file}: no transposed copies")
            continue
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
        spec.sha256 = sha256_of(path)
        print(f"{spec.file}: {graph_saved:,} bytes of transposed copies stored once; graphs.{key}.sha256 updated")
        saved += graph_saved
    if saved:
        write_model_card(card, card_path)
    return saved


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="a model version's folder, with model.json")
    args = parser.parse_args(argv)
    print(f"{share_in_place(args.model_dir):,} bytes saved")


if __name__ == "__main__":
    run(main)
