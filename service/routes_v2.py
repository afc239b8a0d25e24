"""Open Inference Protocol (KServe v2) REST, so stock clients of that protocol work unchanged.

The HTTP adapter of service/v2_infer.py: reads a JSON body (with or without a Content-Type) or
Triton's binary tensor data (service/v2_binary.py), answers JSON or binary as the request asks.
Inputs: one BYTES tensor named "text", shape [N] or [N, 1]. Outputs: sentiment → "label"
(BYTES, the input's shape) and "probabilities" (FP32 [N, C]); translation → "translation" (BYTES).
Request "parameters" may carry beam_size, max_length (translation) and timeout (microseconds, as Triton).
Model metadata and configuration come from service/v2_model.py. Health answers read a flag and
never wait behind inference.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from service import __version__, v2_model, v2_stats
from service.errors import InvalidInput
from service.inputs import deadline_for, header, unless_client_leaves, validate_json, whole_body
from service.json_response import JSONResponse, dumps
from service.registry import ModelRegistry
from service.schemas import JsonInt
from service.v2_binary import HEADER_LENGTH, Datatype, decode_tensor, encode_tensor, split_body, take_binary
from service.v2_infer import (
    Guard,
    InferResult,
    InputTensor,
    infer,
    param_timeout_s,
    refuse_shared_memory,
    requested_outputs,
    served,
)

router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])
_HEADER_LENGTH = HEADER_LENGTH.encode()  # as the scope names headers



class InferInput(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    shape: list[JsonInt]
    datatype: Datatype
    data: list[Any] | None = Field(None, description="row-major values; absent when the tensor is binary "
                                                     "(parameters.binary_data_size)")
    parameters: dict[str, Any] | None = None


class InferOutputRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    parameters: dict[str, Any] | None = Field(None, description="binary_data: true answers this output as binary")


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        None, description="beam_size, max_length (translation), timeout (microseconds), binary_data_output")
    inputs: list[InferInput] = Field(min_length=1)
    outputs: list[InferOutputRequest] | None = None


def _registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


@router.get("", summary="Server metadata")
async def server_metadata(request: Request) -> dict[str, Any]:
    return {"name": "seqserve", "version": __version__,
            "extensions": v2_model.extensions(request.app.state.settings)}


@router.get("/health/live", summary="Liveness: the process answers, and no model has been broken for a minute")
async def live(request: Request) -> JSONResponse:
    registry = getattr(request.app.state, "registry", None)
    ok = registry is None or registry.alive()
    return JSONResponse({"live": ok}, status_code=200 if ok else 503)


@router.get("/health/ready", summary="Readiness: models loaded, their threads working, not shutting down")
async def ready(request: Request) -> JSONResponse:
    ok = bool(getattr(request.app.state, "ready", False)) and _registry(request).healthy()
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


async def _model_ready(request: Request, name: str, version: str | None) -> JSONResponse:
    model = _registry(request).get(name, version)
    ok = bool(getattr(request.app.state, "ready", False)) and model.engine.healthy
    return JSONResponse({"name": model.name, "ready": ok}, status_code=200 if ok else 503)


def _flat(data: list[Any]) -> list[Any]:
    """Row-major values, flat or one list per row (shape [N, 1] sent as [[a], [b]])."""
    return [value for item in data for value in (item if isinstance(item, list) else [item])]


async def _read(request: Request) -> tuple[InferRequest, list[InputTensor]]:
    """The body as JSON (with or without a Content-Type), or as a JSON header followed by binary
    tensor data when Inference-Header-Content-Length is present."""
    body = await whole_body(request)
    header_length = header(request.scope, _HEADER_LENGTH)
    json_part, tail = split_body(body, header_length) if header_length is not None else (body, b"")
    parsed = validate_json(InferRequest, json_part)
    _check_binary_flags(parsed)
    sizes: list[tuple[str, int]] = []
    for t in parsed.inputs:
        parameters = t.parameters or {}
        refuse_shared_memory(f"inputs.{t.name}", parameters)
        size = parameters.get("binary_data_size")
        if "binary_data_size" in parameters:  # null too: refused as the document says, not ignored
            if not isinstance(size, int) or isinstance(size, bool):
                raise InvalidInput(f"inputs.{t.name}.parameters.binary_data_size must be an integer",
                                   field=f"inputs.{t.name}.parameters.binary_data_size")
            if t.data is not None:  # which one would count is not for the client to guess (as on gRPC)
                raise InvalidInput(f"input {t.name!r} has both data and parameters.binary_data_size: send one",
                                   field=f"inputs.{t.name}.data")
            sizes.append((f"inputs.{t.name}", size))
        elif t.data is None:
            raise InvalidInput(f"input {t.name!r} has neither data nor parameters.binary_data_size",
                               field=f"inputs.{t.name}.data")
    raw = take_binary(sizes, tail)
    tensors = []
    for t in parsed.inputs:
        field = f"inputs.{t.name}"
        data = decode_tensor(t.datatype, t.shape, raw[field], field) if field in raw else _flat(t.data or [])
        tensors.append(InputTensor(t.name, t.datatype, t.shape, data))
    return parsed, tensors


def _check_binary_flags(body: InferRequest) -> None:
    """``binary_data_output`` and each output's ``binary_data`` are booleans, checked before the
    work is queued (as Triton refuses a non-boolean): a string "no" was taken as true."""
    flags = [("parameters.binary_data_output", (body.parameters or {}).get("binary_data_output"))]
    flags += [(f"outputs.{o.name}.parameters.binary_data", (o.parameters or {}).get("binary_data"))
              for o in body.outputs or []]
    for field, value in flags:
        if value is not None and not isinstance(value, bool):
            raise InvalidInput(f"{field} must be true or false; got {value!r}"[:200], field=field)


def _render(result: InferResult, body: InferRequest) -> Response:
    """JSON, or the JSON header and the binary outputs after it: an output is binary when the
    request asked so for it (outputs[].parameters.binary_data) or for all (binary_data_output)."""
    every = bool((body.parameters or {}).get("binary_data_output", False))
    asked = {o.name: (o.parameters or {}).get("binary_data") for o in body.outputs or []}
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for out in result.outputs:
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": out.shape}
        binary = asked.get(out.name)
        if every if binary is None else bool(binary):
            blob = encode_tensor(out.datatype, out.data)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = out.data if isinstance(out.data, list) else out.data.ravel().tolist()
        outputs.append(entry)
    answer: dict[str, Any] = {"model_name": result.model_name, "model_version": result.model_version,
                              "outputs": outputs}
    if body.id is not None:
        answer["id"] = body.id
    if result.parameters:
        answer["parameters"] = result.parameters
    if not blobs:
        return JSONResponse(answer)
    header = dumps(answer)
    return Response(b"".join([header, *blobs]), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(header))})


async def _infer(request: Request, name: str, version: str | None) -> Response:
    state = request.app.state
    # 404 before the body's mistakes
    model = served(state.registry, bool(getattr(state, "ready", False)), name, version)
    settings = state.settings

    def deadline(params: dict[str, Any]) -> float:
        return deadline_for(request, settings, param_timeout_s(params))

    guard: Guard = lambda work: unless_client_leaves(request, work)  # noqa: E731
    with v2_stats.counted(model.name, model.version):  # its inputs' refusals count as failures too
        body, inputs = await _read(request)
        result = await infer(settings, model, inputs,
                             requested_outputs([(o.name, o.parameters or {}) for o in body.outputs or []]),
                             body.parameters or {}, deadline, guard)
    return _render(result, body)


# Only the JSON form is in the schema: a binary body (the header's JSON, then raw tensor bytes) has
# no JSON Schema, so a generated client would send bytes the server must refuse.
_INFER_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True, "content": {"application/json": {"schema": InferRequest.model_json_schema()}},
        "description": "Also Triton's binary tensor data: with an Inference-Header-Content-Length header, that "
                       "many bytes of this JSON, then each input's bytes (parameters.binary_data_size)."},
    # an answer with binary outputs (binary_data_output, or an output's binary_data) is Triton's form too
    "responses": {"200": {"description": "The outputs: JSON, or with binary outputs asked for, application/"
                                         "octet-stream: Inference-Header-Content-Length bytes of the JSON, then "
                                         "each binary output's bytes (its parameters.binary_data_size)",
                          "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                              "format": "binary"}}}}}}


@router.get("/models/stats", summary="Statistics of every model (Triton's schema)")
async def all_statistics(request: Request) -> dict[str, Any]:
    return v2_stats.statistics(_registry(request), None, None)


@router.get("/models/{name}/stats", summary="Statistics of a model's versions")
async def model_statistics(request: Request, name: str) -> dict[str, Any]:
    return v2_stats.statistics(_registry(request), name, None)


@router.get("/models/{name}/versions/{version}/stats", summary="Statistics of one version")
async def model_version_statistics(request: Request, name: str, version: str) -> dict[str, Any]:
    return v2_stats.statistics(_registry(request), name, version)


@router.get("/models/{name}", summary="Model metadata")
async def model_metadata(request: Request, name: str) -> dict[str, Any]:
    return v2_model.metadata(_registry(request), name, None)


@router.get("/models/{name}/versions/{version}", summary="Model metadata (one version)")
async def model_version_metadata(request: Request, name: str, version: str) -> dict[str, Any]:
    return v2_model.metadata(_registry(request), name, version)


@router.get("/models/{name}/ready", summary="Model readiness")
async def model_ready(request: Request, name: str) -> JSONResponse:
    return await _model_ready(request, name, None)


@router.get("/models/{name}/versions/{version}/ready", summary="Model readiness (one version)")
async def model_version_ready(request: Request, name: str, version: str) -> JSONResponse:
    return await _model_ready(request, name, version)


@router.get("/models/{name}/config", summary="Model configuration (Triton's JSON form)")
async def model_config(request: Request, name: str) -> dict[str, Any]:
    return v2_model.config(_registry(request), request.app.state.settings, name, None)


@router.get("/models/{name}/versions/{version}/config", summary="Model configuration (one version)")
async def model_version_config(request: Request, name: str, version: str) -> dict[str, Any]:
    return v2_model.config(_registry(request), request.app.state.settings, name, version)


@router.post("/models/{name}/infer", summary="Inference", openapi_extra=_INFER_DOC)
async def infer_latest(request: Request, name: str) -> Response:
    return await _infer(request, name, None)


@router.post("/models/{name}/versions/{version}/infer", summary="Inference (one version)", openapi_extra=_INFER_DOC)
async def infer_version(request: Request, name: str, version: str) -> Response:
    return await _infer(request, name, version)
