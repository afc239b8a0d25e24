"""REST of the model repository extension (service/repository.py): index, load, unload.

Bodies are optional JSON, as tritonclient sends them.
"""

from __future__ import annotations

from typing import Any

import pydantic_core
from fastapi import APIRouter, Request

from service.errors import InvalidInput, json_problem
from service.inputs import whole_body
from service.json_response import JSONResponse
from service.repository import ModelControl, check_load_parameters
from service.schemas import ErrorBody

router = APIRouter(prefix="/v2/repository", tags=["v2 model repository"])

_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (404, 409, 422)}


def _optional_body(properties: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads an optional JSON object (``_body``)."""
    return {"requestBody": {"required": False, "content": {"application/json": {"schema": {
        "type": "object", "properties": properties}}}}}


_INDEX_BODY = _optional_body({"ready": {"type": "boolean", "default": False,
                                        "description": "true: only the versions being served"}})
_LOAD_BODY = _optional_body({"parameters": {
    "type": "object", "maxProperties": 0,
    "description": "Triton's load parameters (config, file:<path>) are not supported: any is refused with 422"}})
_UNLOAD_BODY = _optional_body({"parameters": {
    "type": "object", "description": "Triton's unload parameters (unload_dependents): read and not used"}})


def control(request: Request) -> ModelControl:
    return request.app.state.model_control


async def _body(request: Request) -> dict[str, Any]:
    raw = await whole_body(request)
    if not raw.strip():
        return {}
    try:
        # the parser FastAPI's own bodies go through: 1,500 nested brackets are a refusal like any
        # other (json.loads raised RecursionError, a 500), and its messages are the other routes'
        body = pydantic_core.from_json(raw)
    except ValueError as exc:
        raise InvalidInput(json_problem(str(exc)), field="body") from None
    if not isinstance(body, dict):
        raise InvalidInput("request body must be a JSON object", field="body")
    return body


@router.post("/index", summary="Every version in the repository and whether it is served", responses=_ERRORS,
             openapi_extra=_INDEX_BODY)
async def index(request: Request) -> JSONResponse:
    ready = (await _body(request)).get("ready", False)
    if not isinstance(ready, bool):  # "false" would have counted as true
        raise InvalidInput(f"ready must be true or false; got {ready!r}"[:200], field="ready")
    return JSONResponse(control(request).index(ready_only=ready))


@router.post("/models/{name}/load", summary="Serve the model's versions as they are in the repository",
             responses=_ERRORS, openapi_extra=_LOAD_BODY)
async def load(request: Request, name: str) -> JSONResponse:
    body = await _body(request)
    check_load_parameters(body.get("parameters") or {})
    await control(request).load(name)
    return JSONResponse({})


@router.post("/models/{name}/unload", summary="Stop serving every version of the model (drained first)",
             responses=_ERRORS, openapi_extra=_UNLOAD_BODY)
async def unload(request: Request, name: str) -> JSONResponse:
    await _body(request)
    await control(request).unload(name)
    return JSONResponse({})
