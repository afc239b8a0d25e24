"""How the Open Inference Protocol describes a served model: its metadata and its configuration in
Triton's JSON form (the JSON mapping of Triton's ModelConfig message, so gRPC parses the same dict).

Every model takes one BYTES tensor "text" and is batched on its first dimension (up to
SEQSERVE_MAX_TEXTS_PER_REQUEST texts): shape [N, 1] in Triton's terms; [N] is accepted too, and an
answer's BYTES outputs have the rank the input had.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.registry import ModelRegistry, ServedModel
from service.settings import Settings
from service.version_policy import VersionPolicy


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    dims: list[int]  # without the batch dimension

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": [-1, *self.dims]}

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "data_type": "TYPE_STRING" if self.datatype == "BYTES" else f"TYPE_{self.datatype}",
                "dims": self.dims}


TEXT_INPUT = TensorSpec("text", "BYTES", [1])


def extensions(settings: Settings) -> list[str]:
    """What GET /v2 and gRPC ServerMetadata list: only extensions implemented as Triton's schema
    has them (the repository's load and unload only when model control is on and can work)."""
    return ["binary_tensor_data", "model_configuration", "parameters", "statistics",
            # only where a load can succeed: model control needs one server process
            *(["model_repository"] if settings.model_control and settings.workers == 1 else [])]


def outputs_of(model: ServedModel) -> list[TensorSpec]:
    if model.card.task == "text-classification":
        return [TensorSpec("label", "BYTES", [1]), TensorSpec("probabilities", "FP32", [len(model.card.labels or [])])]
    # "hypotheses" [N, k]: the n-best list, answered when parameters.num_hypotheses is given
    return [TensorSpec("translation", "BYTES", [1]), TensorSpec("hypotheses", "BYTES", [-1])]


def metadata(registry: ModelRegistry, name: str, version: str | None) -> dict[str, Any]:
    model = registry.get(name, version)
    return {"name": model.name, "versions": [m.version for m in registry.versions(name)],
            "platform": "onnxruntime_onnx",
            "inputs": [TEXT_INPUT.metadata()], "outputs": [o.metadata() for o in outputs_of(model)],
            "parameters": {"task": model.card.task, "provider": model.provider, "precision": model.precision}}


def config(registry: ModelRegistry, settings: Settings, name: str, version: str | None) -> dict[str, Any]:
    """Triton's model configuration: what perf_analyzer and Triton-aware tools read (batching,
    tensor types and dims); ``parameters`` holds seqserve's own limits as strings, as Triton's do."""
    model = registry.get(name, version)
    card = model.card
    kind = "KIND_GPU" if model.provider == "CUDAExecutionProvider" else "KIND_CPU"
    limits: dict[str, Any] = {"task": card.task, "precision": model.precision,
                              "max_input_tokens": card.max_input_tokens,
                              "max_text_chars": settings.max_text_chars,
                              "request_timeout_s": settings.request_timeout_s}
    if card.decoding is not None:
        limits.update(max_beam_size=card.decoding.max_beam_size, default_beam_size=card.decoding.default_beam_size,
                      max_output_tokens=card.max_output_tokens)
    return {
        "name": model.name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "version_policy": settings.version_policy.get(model.name, VersionPolicy()).config(),
        "max_batch_size": settings.max_texts_per_request,
        "input": [TEXT_INPUT.config()],
        "output": [o.config() for o in outputs_of(model)],
        "dynamic_batching": {"max_queue_delay_microseconds": int(settings.max_queue_delay_ms * 1000),
                             "default_queue_policy": {"max_queue_size": settings.max_queue_size}},
        "instance_group": [{"name": f"{model.name}_0", "kind": kind, "count": model.instances}],
        "parameters": {key: {"string_value": str(value)} for key, value in limits.items()},
    }
