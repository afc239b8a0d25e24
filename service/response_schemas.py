"""What the v2 routes answer, as JSON Schema, for the OpenAPI document.

The v1 answers are pydantic models (service/schemas.py) that FastAPI puts in the document. The v2
routes build their answers in Triton's form as dicts (service/routes_v2.py, routes_stream.py,
routes_repository.py), so the document said nothing of them (``{}``) and clients generated from
it returned untyped values. They are stated here, inference per served model (its output
tensors), and held against the server's real answers by the API fuzz test (schemathesis'
response_schema_conformance) and tests/test_response_schemas.py.

Optional fields are left out of ``required`` rather than allowed to be null: the server omits
them, it never sends null.
"""

from __future__ import annotations

from service.registry import ServedModel
from service.request_schemas import JsonSchema
from service.v2_model import outputs_of

_FLAG: JsonSchema = {"type": "boolean"}
_VERSION: JsonSchema = {"type": "string", "description": "the version that answered"}


def _answer(required: dict[str, JsonSchema], optional: dict[str, JsonSchema] | None = None) -> JsonSchema:
    return {"type": "object", "required": list(required), "properties": required | (optional or {})}


def infer(model: ServedModel) -> JsonSchema:
    """One model's v2 inference answer in its JSON form: one tensor per output asked for (all of
    them when none was named; ``hypotheses`` only with ``num_hypotheses``), each [N, columns]; a
    binary output has no ``data`` but its ``parameters.binary_data_size``, the bytes after the JSON."""
    tensors = []
    for spec in outputs_of(model):
        item: JsonSchema = {"type": "number"} if spec.datatype.startswith(("FP", "INT", "UINT")) else {"type": "string"}
        tensors.append(_answer(
            {"name": {"const": spec.name}, "datatype": {"const": spec.datatype},
             # [N, columns], or [N] for a one-column output of a request whose input was [N]
             "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1, "maxItems": 2}},
            {"data": {"type": "array", "items": item, "description": "row-major"},
             "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer", "minimum": 0}}}}))
    return _answer(
        {"model_name": {"const": model.name}, "model_version": _VERSION,
         "outputs": {"type": "array", "items": {"oneOf": tensors}, "minItems": 1}},
        {"id": {"type": "string", "description": "the request's id, when it gave one"},
         "parameters": {"type": "object", "properties": {
             "seed": {"type": "integer", "description": "sampling: the seed drawn or given"}}}})


def generate() -> JsonSchema:
    """Triton's generate extension: one translation (``seed`` when sampled)."""
    return _answer({"model_name": {"type": "string"}, "model_version": _VERSION, "text_output": {"type": "string"},
                    "finish_reason": {"type": "string", "enum": ["stop", "length"], "description": (
                        "stop: the model ended the translation; length: it reached max_tokens (max_length) first, "
                        "so it may be incomplete")}},
                   {"seed": {"type": "integer", "description": "sampling: the seed drawn or given"}})


LIVE = _answer({"live": _FLAG})
READY = _answer({"ready": _FLAG})
MODEL_READY = _answer({"name": {"type": "string"}, "ready": _FLAG})
REPOSITORY_INDEX: JsonSchema = {"type": "array", "items": _answer(
    {"name": {"type": "string"}, "version": {"type": "string"},
     "state": {"type": "string", "enum": ["READY", "UNAVAILABLE"]}},
    {"reason": {"type": "string", "description": "why a version is not served"}})}
NOTHING: JsonSchema = {"type": "object", "maxProperties": 0, "description": "done (an empty object)"}
_STRINGS: JsonSchema = {"type": "array", "items": {"type": "string"}}
SERVER_METADATA = _answer({"name": {"type": "string"}, "version": {"type": "string"},
                           "extensions": {**_STRINGS, "description": "the protocol extensions served"}})
_TENSOR_METADATA = _answer({"name": {"type": "string"}, "datatype": {"type": "string"},
                            "shape": {"type": "array", "items": {"type": "integer"},
                                      "description": "-1: any size along that axis"}})
MODEL_METADATA = _answer(
    {"name": {"type": "string"}, "versions": {**_STRINGS, "description": "the versions served"},
     "platform": {"type": "string"}, "inputs": {"type": "array", "items": _TENSOR_METADATA},
     "outputs": {"type": "array", "items": _TENSOR_METADATA}},
    {"parameters": {"type": "object", "description": "seqserve's own: task, provider, precision (fp32 or int8)",
                    "properties": {"task": {"type": "string"}, "provider": {"type": "string"},
                                   "precision": {"type": "string", "enum": ["fp32", "int8"]}}}})
_CONFIG_TENSOR = _answer({"name": {"type": "string"}, "data_type": {"type": "string"},
                          "dims": {"type": "array", "items": {"type": "integer"}}})
MODEL_CONFIG = _answer(
    {"name": {"type": "string"}, "platform": {"type": "string"}, "backend": {"type": "string"},
     "max_batch_size": {"type": "integer", "minimum": 0}, "input": {"type": "array", "items": _CONFIG_TENSOR},
     "output": {"type": "array", "items": _CONFIG_TENSOR}},
    {"version_policy": {"type": "object"}, "dynamic_batching": {"type": "object"},
     "instance_group": {"type": "array", "items": {"type": "object"}},
     "parameters": {"type": "object", "description": "seqserve's limits and precision, each {string_value}",
                    "additionalProperties": _answer({"string_value": {"type": "string"}})}})
_DURATION = _answer({"count": {"type": "integer", "minimum": 0}, "ns": {"type": "integer", "minimum": 0}})
_PHASES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")
STATISTICS = _answer({"model_stats": {"type": "array", "items": _answer(
    {"name": {"type": "string"}, "version": {"type": "string"},
     "last_inference": {"type": "integer", "minimum": 0, "description": "ms since the epoch; 0: none yet"},
     "inference_count": {"type": "integer", "minimum": 0}, "execution_count": {"type": "integer", "minimum": 0},
     "inference_stats": _answer({phase: _DURATION for phase in _PHASES}),
     "batch_stats": {"type": "array", "items": {"type": "object"}},
     "memory_usage": {"type": "array", "items": {"type": "object"}}})}})


def answers() -> dict[str, JsonSchema]:
    """Path -> the JSON body of its 200 (readiness: of its 503 too) for the v2 routes outside
    inference, whose answers do not depend on the model."""
    one = ("", "/versions/{version}")
    ready = {f"/v2/models/{{name}}{v}/ready": MODEL_READY for v in one}
    generated = {f"/v2/models/{{name}}{v}/generate": generate() for v in one}
    metadata = {f"/v2/models/{{name}}{v}": MODEL_METADATA for v in one}
    config = {f"/v2/models/{{name}}{v}/config": MODEL_CONFIG for v in one}
    stats = {path: STATISTICS for path in ("/v2/models/stats", "/v2/models/{name}/stats",
                                           "/v2/models/{name}/versions/{version}/stats")}
    return {"/v2": SERVER_METADATA, "/v2/health/live": LIVE, "/v2/health/ready": READY, **ready, **generated,
            **metadata, **config, **stats, "/v2/repository/index": REPOSITORY_INDEX,
            "/v2/repository/models/{name}/load": NOTHING, "/v2/repository/models/{name}/unload": NOTHING}
