"""ONNX Runtime sessions: provider choice and the check of each graph against its model card."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

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


class ModelLoadError(RuntimeError):
    """A graph file that is missing, corrupt, or does not match its model.json."""


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


def open_session(
    model_dir: Path, spec: GraphSpec, providers: list[str], intra_op_threads: int = 0, verify_hash: bool = True
) -> ort.InferenceSession:
    """Open one graph and refuse it, naming the file, if it does not match ``spec``."""
    path = model_dir / spec.file
    if not path.is_file():
        raise ModelLoadError(f"{path}: graph file not found")
    if verify_hash and sha256_of(path) != spec.sha256:
        raise ModelLoadError(f"{path}: sha256 differs from model.json (file corrupt or replaced)")
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
    _check_io(path, "input", [(i.name, i.type) for i in session.get_inputs()], spec.inputs)
    _check_io(path, "output", [(o.name, o.type) for o in session.get_outputs()], spec.outputs)
    return session


def _check_io(path: Path, kind: str, actual: list[tuple[str, str]], expected: list[TensorSpec]) -> None:
    got = [(name, _ORT_TYPES.get(t, t)) for name, t in actual]
    want = [(t.name, t.dtype) for t in expected]
    if got != want:
        raise ModelLoadError(f"{path}: graph {kind}s {got} do not match model.json {want}")
