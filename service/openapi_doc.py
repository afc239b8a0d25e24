"""What FastAPI's generated OpenAPI document lacks, for clients generated from it.

Request bodies that handlers parse themselves are declared with their model's JSON schema; its
nested models ($defs) are moved to components/schemas so that every reference resolves.

Each operation lists every status it can answer with, all with the one error body
(service/errors.py). Most come from layers outside the route (the middlewares, the catch-all handler, the engines), so
they are added here from what each operation is, rather than repeated on every route:
- every operation: 500 (a bug, answered in JSON by the catch-all handler);
- with API keys set, every operation outside the exempt and public paths: 401;
- every POST: 413 (body over SEQSERVE_MAX_BODY_BYTES), 415 (a Content-Type that is not JSON), 422;
- a path naming a model: 404; readiness: 503;
- inference: 404, 503 (queue full, starting, draining), 504 (deadline), 499 (the client left:
  logged, never read);
- model control: 404, 409.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.schemas import ErrorBody
from service.settings import Settings

_DESCRIPTIONS = {
    401: "missing or invalid API key", 404: "unknown model or version", 409: "model control refused or failed",
    413: "request body over the size limit", 415: "Content-Type is not JSON", 422: "invalid request",
    499: "the client closed the connection before the answer", 500: "internal error",
    503: "overloaded (with Retry-After), starting or shutting down", 504: "deadline passed",
}
_INFER_PATHS = ("/v1/sentiment", "/v1/translate")


def _statuses(path: str, method: str, settings: Settings, public: frozenset[str]) -> set[int]:
    codes = {500}
    if settings.api_keys and not path.startswith(tuple(settings.auth_exempt_paths)) and path not in public:
        codes.add(401)
    if method == "post":
        codes |= {413, 415, 422}
    if "{name}" in path:
        codes |= {404, 422}
    if path.endswith("/ready"):
        codes.add(503)
    if path in _INFER_PATHS or path.endswith(("/infer", "/generate", "/generate_stream")):
        codes |= {404, 499, 503, 504}
    if path.startswith("/v2/repository/models/"):
        codes |= {404, 409}
    return codes


def _hoist_defs(node: Any, schemas: dict[str, Any]) -> None:
    """Move each ``$defs`` into ``schemas`` and point its references there."""
    if isinstance(node, dict):
        for name, schema in node.pop("$defs", {}).items():
            schemas.setdefault(name, schema)
            _hoist_defs(schema, schemas)
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            node["$ref"] = "#/components/schemas/" + ref.removeprefix("#/$defs/")
        for value in node.values():
            _hoist_defs(value, schemas)
    elif isinstance(node, list):
        for value in node:
            _hoist_defs(value, schemas)


def install(app: FastAPI, settings: Settings, public_paths: frozenset[str]) -> None:
    """Replace the app's OpenAPI builder with one that adds the error statuses (built once)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            schemas.setdefault("ErrorBody", ErrorBody.model_json_schema())
            ref = {"$ref": "#/components/schemas/ErrorBody"}
            for path, operations in doc.get("paths", {}).items():
                for method, operation in operations.items():
                    _hoist_defs(operation.get("requestBody", {}), schemas)
                    responses = operation.setdefault("responses", {})
                    for code in sorted(_statuses(path, method, settings, public_paths)):
                        entry = responses.setdefault(str(code), {"description": _DESCRIPTIONS[code]})
                        # FastAPI's own 422 schema (HTTPValidationError) is not what the server sends
                        entry["content"] = {"application/json": {"schema": ref}}
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
