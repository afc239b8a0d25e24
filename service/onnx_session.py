"""ONNX Runtime sessions: provider choice (with the CUDA provider's options), the check of each
graph against its model card, and which provider ran each node (from ORT's profiler).

A graph runs in one of two precisions. fp32 is the committed file, checked by its sha256 in
model.json. int8 is derived from it (``python -m export.quantize``, run by ``make int8`` and at
image build) into ``<stem>.int8.onnx`` beside it, git-ignored; the quantizer's bytes vary across
ONNX Runtime versions, so it is checked by parity when derived, and carries in its ONNX metadata
the sha256 of the fp32 graph it came from: a derived graph left over from an older fp32 graph is
refused here.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeAlias

import onnxruntime as ort

from service.model_card import GraphSpec, TensorSpec
from service.settings import Settings

log = logging.getLogger("seqserve.onnx")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
# ONNX Runtime's own form: a provider's name, or its name and its options
Provider: TypeAlias = str | tuple[str, dict[str, str]]

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


class ProviderUnavailable(ModelLoadError):
    """SEQSERVE_PROVIDERS=cuda, and the CUDA provider is not there or does not start."""


def graph_path(model_dir: Path, spec: GraphSpec, precision: Precision = "fp32") -> Path:
    """The file a graph runs from in ``precision``: sentiment.onnx -> sentiment.int8.onnx."""
    if precision == "fp32":
        return model_dir / spec.file
    return model_dir / f"{spec.file.removesuffix('.onnx')}.{precision}.onnx"


@dataclass(frozen=True)
class CudaOptions:
    """The CUDA provider's options that the settings expose (SEQSERVE_CUDA_*)."""

    device_id: int = 0
    mem_limit_mb: int = 0  # 0 = no limit beyond the device's memory
    arena: Literal["kNextPowerOfTwo", "kSameAsRequested"] = "kNextPowerOfTwo"
    # ORT's CUDA provider uses TF32 tensor cores for fp32 matrix products by default; their 10-bit
    # mantissa can move outputs past the export's parity tolerance, so it is off unless asked for
    tf32: bool = False

    def provider_options(self) -> dict[str, str]:
        options = {"device_id": str(self.device_id), "arena_extend_strategy": self.arena,
                   "use_tf32": "1" if self.tf32 else "0"}
        if self.mem_limit_mb:
            options["gpu_mem_limit"] = str(self.mem_limit_mb * 1024 * 1024)
        return options


def cuda_options(settings: Settings) -> CudaOptions:
    return CudaOptions(settings.cuda_device_id, settings.cuda_mem_limit_mb, settings.cuda_arena, settings.cuda_tf32)


_ORT_FATAL, _ORT_WARNING = 4, 2  # ONNX Runtime's logging severities


def quiet_runtime_log(log_level: str) -> None:
    """ONNX Runtime's own C++ log writes to stderr by itself, in colour, outside the service's log
    (a failed batch printed an ANSI line before the JSON one under LOG_FORMAT=json). Its errors
    reach the service as exceptions, which are logged: only its fatal lines stay, its warnings too
    at LOG_LEVEL=debug."""
    ort.set_default_logger_severity(_ORT_WARNING if log_level.lower() == "debug" else _ORT_FATAL)


def choose_providers(preferred: str = "auto", cuda: CudaOptions | None = None) -> list[Provider]:
    """CUDA (with its options) when asked for or available ('auto'), else CPU; CPU always stays as
    the fallback for nodes the CUDA provider has no kernel for. 'cuda' without a CUDA provider in
    this onnxruntime is refused (ProviderUnavailable) rather than quietly served on the CPU."""
    available = ort.get_available_providers()
    if preferred == "cpu":
        return [CPU]
    if CUDA in available:
        return [(CUDA, (cuda or CudaOptions()).provider_options()), CPU]
    if preferred == "cuda":
        raise ProviderUnavailable(
            f"SEQSERVE_PROVIDERS=cuda, but this onnxruntime {ort.__version__} offers only {', '.join(available)}: "
            "install onnxruntime-gpu instead of onnxruntime (never both), or set SEQSERVE_PROVIDERS=auto or cpu")
    log.info("no CUDA provider in this onnxruntime %s (it offers %s): the CPU", ort.__version__, ", ".join(available))
    return [CPU]


def provider_name(provider: Provider) -> str:
    return provider if isinstance(provider, str) else provider[0]


def on_cuda(providers: list[Provider]) -> bool:
    return any(provider_name(p) == CUDA for p in providers)


def device_of(session: ort.InferenceSession) -> tuple[str, int]:
    """Where I/O binding puts values for this session: ('cuda', device id) or ('cpu', 0)."""
    if session.get_providers()[0] != CUDA:
        return "cpu", 0
    return "cuda", int(session.get_provider_options()[CUDA].get("device_id", 0))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@functools.cache  # once a process, not once per graph
def _warn_no_tmp() -> None:
    log.warning("no writable temporary folder: the check of which nodes ran on the CPU is off")


def session_options(intra_op_threads: int = 0, profile_as: str | None = None) -> ort.SessionOptions:
    """The options every session of the service gets. ``profile_as`` turns ORT's profiler on (its
    file goes to the temporary folder under that name) until ``node_providers`` reads it."""
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
    if profile_as is not None:
        try:
            folder = tempfile.gettempdir()
        except FileNotFoundError:  # a read-only root without a writable /tmp: serve without the profile
            _warn_no_tmp()
            return options
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(folder, f"seqserve-{os.getpid()}-{profile_as}")
    return options


def open_session(model_dir: Path, spec: GraphSpec, providers: list[Provider], intra_op_threads: int = 0,
                 precision: Precision = "fp32", profile: bool | None = None) -> ort.InferenceSession:
    """Open one graph and refuse it, naming the file, if it does not match ``spec``. The fp32
    graph is checked whatever the precision: a derived graph is only as good as its source. The
    profiler (on CUDA unless ``profile`` says otherwise) runs until ``node_providers`` is called
    (after the warm-up), to say which nodes ran on the CPU."""
    source, path = model_dir / spec.file, graph_path(model_dir, spec, precision)
    for file in dict.fromkeys((source, path)):
        if not file.is_file():
            raise ModelLoadError(f"{file}: graph file not found")
    if sha256_of(source) != spec.sha256:
        raise ModelLoadError(f"{source}: sha256 differs from model.json (file corrupt or replaced)")
    if profile is None:
        profile = on_cuda(providers)
    options = session_options(intra_op_threads, path.stem if profile else None)
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped errors for a bad file
        raise ModelLoadError(f"{path}: ONNX Runtime cannot load it: {exc}") from exc
    if precision != "fp32":
        stamp = session.get_modelmeta().custom_metadata_map.get(SOURCE_SHA256_KEY)
        if stamp != spec.sha256:
            raise StaleGraphError(f"{path}: derived from another fp32 graph than {spec.file} (stamp {stamp}); "
                                  f"derive it again with `python -m export.quantize --model-dir {model_dir}`")
    _check_io(path, "input", session.get_inputs(), spec.inputs)
    _check_io(path, "output", session.get_outputs(), spec.outputs)
    return session


def node_providers(session: ort.InferenceSession) -> Counter[tuple[str, str]]:
    """(provider, operator) -> nodes run, from ORT's profiler, for the runs since the session
    opened; ends the profiling and deletes its file. Empty when the profiler was off."""
    if not session.get_session_options().enable_profiling:
        return Counter()
    name = session.end_profiling()  # '' once the profiling has ended
    if not name:
        return Counter()
    path = Path(name)
    try:
        text = path.read_text()
    except OSError as exc:  # ONNX Runtime could not write it, and says nothing when it cannot
        log.warning("ONNX Runtime's profile %s cannot be read (%s): the check of which nodes ran on the CPU is off",
                    path, exc)
        return Counter()
    try:
        return providers_in_profile(json.loads(text))
    finally:
        path.unlink(missing_ok=True)


def providers_in_profile(events: list[dict[str, object]]) -> Counter[tuple[str, str]]:
    """Distinct nodes per (provider, operator) in an ORT profile (its 'Node' events name both)."""
    seen: set[tuple[str, str, str]] = set()
    for event in events:
        args = event.get("args")
        if event.get("cat") == "Node" and isinstance(args, dict) and "provider" in args:
            seen.add((str(args["provider"]), str(args.get("op_name", "?")), str(event.get("name", ""))
                      .removesuffix("_kernel_time").removesuffix("_fence_before").removesuffix("_fence_after")))
    return Counter((provider, op) for provider, op, _ in seen)


def log_placement(name: str, graph: str, session: ort.InferenceSession) -> Counter[tuple[str, str]]:
    """Log which nodes of a CUDA session ran on the CPU (shape arithmetic is expected there; a
    recurrent or matrix node would be a slow fallback). Returns the counts."""
    counts = node_providers(session)
    if not counts:
        return counts
    on_cpu = {op: n for (provider, op), n in counts.items() if provider != CUDA}
    on_cuda = sum(n for (provider, _), n in counts.items() if provider == CUDA)
    if on_cpu:
        log.warning("%s/%s: %d nodes ran on CUDA, %d on the CPU: %s", name, graph, on_cuda, sum(on_cpu.values()),
                    ", ".join(f"{op} x{n}" for op, n in sorted(on_cpu.items())))
    else:
        log.info("%s/%s: all %d nodes ran on CUDA", name, graph, on_cuda)
    return counts


def _check_io(path: Path, kind: str, actual: list[ort.NodeArg], expected: list[TensorSpec]) -> None:
    """Names and dtypes as the card lists them, and every size both fix alike: a card that says 3
    classes for a graph of 2 (or a vocabulary of another size) would load and fail every request."""
    got = [(arg.name, _ORT_TYPES.get(arg.type, arg.type)) for arg in actual]
    want = [(t.name, t.dtype) for t in expected]
    if got != want:
        raise ModelLoadError(f"{path}: graph {kind}s {got} do not match model.json {want}")
    for arg, spec in zip(actual, expected, strict=True):
        shape = arg.shape  # ints are fixed sizes; strings or None are dynamic axes
        if not shape and spec.shape:  # a rank ONNX could not infer (ONNX Runtime says []): nothing to compare
            continue
        fixed_apart = any(isinstance(g, int) and isinstance(c, int) and g != c
                          for g, c in zip(shape, spec.shape, strict=False))
        if len(shape) != len(spec.shape) or fixed_apart:
            raise ModelLoadError(f"{path}: graph {kind} {arg.name} has shape {list(shape)}, but model.json says "
                                 f"{spec.shape}")
