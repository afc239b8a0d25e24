"""ONNX Runtime sessions: provider choice and the check of each graph against its model card.

A graph runs in one of two precisions. fp32 is the committed file, checked by its sha256 in
model.json. int8 is derived from it (``python -m export.quantize``, run by ``make int8`` and at
image build) into ``<stem>.int8.onnx`` beside it, git-ignored; the quantizer's bytes vary across
ONNX Runtime versions, so it is checked by parity when derived, and carries in its ONNX metadata
the sha256 of the fp32 graph it came from: a derived graph left over from an older fp32 graph is
refused here.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Literal

import onnxruntime as ort

from service.model_card import GraphSpec, TensorSpec

log = logging.getLogger("seqserve.onnx")

_ORT_TYPES = {
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(bool)": "bool",
}


Precision = Literal["fp32", "int8"]
DERIVED: tuple[Precision, ...] = ("int8",)
SOURCE_SHA256_KEY = "seqserve.source_sha256"  # ONNX metadata of a derived graph: its fp32 graph's sha256


class ModelLoadError(RuntimeError):
    """A graph file that is missing, corrupt, or does not match its model.json."""


class StaleGraphError(ModelLoadError):
    """A derived graph that was not derived from the fp32 graph model.json names."""


def graph_path(model_dir: Path, spec: GraphSpec, precision: Precision = "fp32") -> Path:
    """The file a graph runs from in ``precision``: sentiment.onnx -> sentiment.int8.onnx."""
    if precision == "fp32":
        return model_dir / spec.file
    return model_dir / f"{spec.file.removesuffix('.onnx')}.{precision}.onnx"


def choose_providers(preferred: str = "auto") -> list[str]:
    """CUDA when asked for or available ('auto'), else CPU; CPU always stays as the fallback."""
    available = ort.get_available_providers()
    if preferred == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if preferred == "cuda":
        log.warning("CUDA was requested but this onnxruntime offers only %s; using the CPU", available)
    return ["CPUExecutionProvider"]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def open_session(model_dir: Path, spec: GraphSpec, providers: list[str], intra_op_threads: int = 0,
                 precision: Precision = "fp32") -> ort.InferenceSession:
    """Open one graph and refuse it, naming the file, if it does not match ``spec``. The fp32
    graph is checked whatever the precision: a derived graph is only as good as its source."""
    source, path = model_dir / spec.file, graph_path(model_dir, spec, precision)
    for file in dict.fromkeys((source, path)):
        if not file.is_file():
            raise ModelLoadError(f"{file}: graph file not found")
    if sha256_of(source) != spec.sha256:
        raise ModelLoadError(f"{source}: sha256 differs from model.json (file corrupt or replaced)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ORT's worker threads spin while waiting for work by default; in a server they would burn
    # the cores the event loop and the other models need between batches.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # ORT's CPU arena keeps the peak of every shape it has seen (a burst of long batches would
    # stay resident); plain malloc/free lets memory go back after the burst
    options.enable_cpu_mem_arena = False
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped errors for a bad file
        raise ModelLoadError(f"{path}: ONNX Runtime cannot load it: {exc}") from exc
    if precision != "fp32":
        stamp = session.get_modelmeta().custom_metadata_map.get(SOURCE_SHA256_KEY)
        if stamp != spec.sha256:
            raise StaleGraphError(f"{path}: derived from another fp32 graph than {spec.file} (stamp {stamp}); "
                                  f"derive it again with `python -m export.quantize --model-dir {model_dir}`")
    _check_io(path, "input", [(i.name, i.type) for i in session.get_inputs()], spec.inputs)
    _check_io(path, "output", [(o.name, o.type) for o in session.get_outputs()], spec.outputs)
    return session


def _check_io(path: Path, kind: str, actual: list[tuple[str, str]], expected: list[TensorSpec]) -> None:
    got = [(name, _ORT_TYPES.get(t, t)) for name, t in actual]
    want = [(t.name, t.dtype) for t in expected]
    if got != want:
        raise ModelLoadError(f"{path}: graph {kind}s {got} do not match model.json {want}")
