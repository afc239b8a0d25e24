"""Open Inference Protocol (KServe v2) REST, so stock clients of that protocol work unchanged.

Inputs: one BYTES tensor named "text", shape [N] or [N, 1]. Outputs: sentiment → "label"
(BYTES [N]) and "probabilities" (FP32 [N, C]); translation → "translation" (BYTES [N]).
Request "parameters" may carry beam_size, max_length (translation) and timeout (seconds).
Health answers read a flag and never wait behind inference.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from service import __version__
from service.errors import InvalidInput, NotReady
from service.inputs import check_texts, deadline_for
from service.registry import ModelRegistry, ServedModel
from service.routes_v1 import classify_texts, run_translations, translation_jobs

router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])


class InferInput(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]
    parameters: dict[str, Any] | None = None


class InferOutputRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferInput] = Field(min_length=1)
    outputs: list[InferOutputRequest] | None = None


def _registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


@router.get("", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return {"name": "seqserve", "version": __version__, "extensions": []}


@router.get("/health/live", summary="Liveness: the process answers")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Readiness: models loaded and not shutting down")
async def ready(request: Request) -> JSONResponse:
    ok = bool(getattr(request.app.state, "ready", False))
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


def _io(model: ServedModel) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    inputs = [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    if model.card.task == "text-classification":
        classes = len(model.card.labels or [])
        outputs = [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                   {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]}]
    else:
        outputs = [{"name": "translation", "datatype": "BYTES", "shape": [-1]}]
    return inputs, outputs


async def _metadata(request: Request, name: str, version: str | None) -> dict[str, Any]:
    model = _registry(request).get(name, version)
    inputs, outputs = _io(model)
    versions = sorted((m.version for m in _registry(request).all() if m.name == name), key=int)
    return {"name": model.name, "versions": versions, "platform": "onnxruntime_onnx",
            "inputs": inputs, "outputs": outputs,
            "parameters": {"task": model.card.task, "provider": model.provider}}


async def _model_ready(request: Request, name: str, version: str | None) -> JSONResponse:
    model = _registry(request).get(name, version)
    ok = bool(getattr(request.app.state, "ready", False))
    return JSONResponse({"name": model.name, "ready": ok}, status_code=200 if ok else 503)


def _texts(body: InferRequest) -> list[str]:
    tensor = next((t for t in body.inputs if t.name == "text"), body.inputs[0] if len(body.inputs) == 1 else None)
    if tensor is None:
        raise InvalidInput("inputs must contain a BYTES tensor named 'text'", field="inputs")
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"input 'text' must have datatype BYTES, not {tensor.datatype}",
                           field="inputs.text.datatype")
    if not tensor.shape or len(tensor.shape) > 2 or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
        raise InvalidInput(f"input 'text' must have shape [N] or [N, 1], not {tensor.shape}",
                           field="inputs.text.shape")
    flat: list[Any] = []
    for item in tensor.data:
        flat.extend(item if isinstance(item, list) else [item])
    if len(flat) != tensor.shape[0] or not all(isinstance(t, str) for t in flat):
        raise InvalidInput(f"input 'text' data must be {tensor.shape[0]} strings, as its shape says",
                           field="inputs.text.data")
    return flat


def _param_int(params: dict[str, Any], key: str) -> int | None:
    value = params.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise InvalidInput(f"parameters.{key} must be an integer", field=f"parameters.{key}")
    return value


async def _infer(request: Request, name: str, version: str | None, body: InferRequest) -> dict[str, Any]:
    if not getattr(request.app.state, "ready", False):
        raise NotReady("server is not ready")
    settings = request.app.state.settings
    model = _registry(request).get(name, version)
    params = body.parameters or {}
    texts = check_texts(_texts(body), settings, "inputs.text.data")
    deadline = deadline_for(request, settings, params.get("timeout"))
    outputs: list[dict[str, Any]]
    n = len(texts)
    if model.card.task == "text-classification":
        probs = np.stack(await classify_texts(model, texts, "inputs.text.data", deadline))
        labels = model.card.labels or []
        outputs = [{"name": "label", "datatype": "BYTES", "shape": [n],
                    "data": [labels[int(i)] for i in probs.argmax(-1)]},
                   {"name": "probabilities", "datatype": "FP32", "shape": [n, probs.shape[1]],
                    "data": [float(x) for x in probs.ravel()]}]
    else:
        jobs = translation_jobs(model, texts, "inputs.text.data", _param_int(params, "beam_size"),
                                _param_int(params, "max_length"), False)
        results = await run_translations(request, model, jobs, deadline)
        runner = model.runner
        outputs = [{"name": "translation", "datatype": "BYTES", "shape": [n],
                    "data": [runner.detokenize(r.tokens) for r in results]}]  # type: ignore[union-attr]
    if body.outputs:
        wanted = {o.name for o in body.outputs}
        unknown = wanted - {o["name"] for o in outputs}
        if unknown:
            raise InvalidInput(f"unknown outputs {sorted(unknown)}", field="outputs")
        outputs = [o for o in outputs if o["name"] in wanted]
    response: dict[str, Any] = {"model_name": model.name, "model_version": model.version, "outputs": outputs}
    if body.id is not None:
        response["id"] = body.id
    return response


@router.get("/models/{name}", summary="Model metadata")
async def model_metadata(request: Request, name: str) -> dict[str, Any]:
    return await _metadata(request, name, None)


@router.get("/models/{name}/versions/{version}", summary="Model metadata (one version)")
async def model_version_metadata(request: Request, name: str, version: str) -> dict[str, Any]:
    return await _metadata(request, name, version)


@router.get("/models/{name}/ready", summary="Model readiness")
async def model_ready(request: Request, name: str) -> JSONResponse:
    return await _model_ready(request, name, None)


@router.get("/models/{name}/versions/{version}/ready", summary="Model readiness (one version)")
async def model_version_ready(request: Request, name: str, version: str) -> JSONResponse:
    return await _model_ready(request, name, version)


@router.post("/models/{name}/infer", summary="Inference")
async def infer(request: Request, name: str, body: InferRequest) -> JSONResponse:
    return JSONResponse(await _infer(request, name, None, body))


@router.post("/models/{name}/versions/{version}/infer", summary="Inference (one version)")
async def infer_version(request: Request, name: str, version: str, body: InferRequest) -> JSONResponse:
    return JSONResponse(await _infer(request, name, version, body))
