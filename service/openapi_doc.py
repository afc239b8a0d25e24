"""What FastAPI's generated OpenAPI document lacks, for clients generated from it.

Request bodies that handlers parse themselves are declared with their model's JSON schema; its
nested models ($defs) are moved to components/schemas so that every reference resolves.

Request bodies state the limits and cross-field rules the handlers enforce
(service/request_schemas.py), from the settings and the served models' cards; the document is
built again after a model is loaded or unloaded.

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

import copy
import json
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse

from service import request_schemas, response_schemas
from service.inputs import MAX_TIMEOUT_S
from service.schemas import ErrorBody
from service.settings import Settings

_DESCRIPTIONS = {
    401: "missing or invalid API key", 404: "unknown model or version", 409: "model control refused or failed",
    413: "request body over the size limit", 415: "Content-Type is not JSON", 422: "invalid request",
    499: "the client closed the connection before the answer", 500: "internal error",
    503: "overloaded (with Retry-After), starting or shutting down", 504: "deadline passed",
}
_INFER_PATHS = ("/v1/sentiment", "/v1/translate")
# the deadline a client may shorten on every inference route (service/inputs.py deadline_for)
_TIMEOUT_HEADER = {"name": "X-Request-Timeout", "in": "header", "required": False,
                   "description": "seconds this request may take, from its arrival (shortens "
                                  "SEQSERVE_REQUEST_TIMEOUT_S; 504 after it)",
                   "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_TIMEOUT_S}}
# FastAPI's own 422 schemas: every 422 here answers ErrorBody, so they would be dead models in a client
_UNUSED = ("HTTPValidationError", "ValidationError")


def _sse(event_names: list[str] | None) -> dict[str, Any]:
    """A streamed answer (POST /v1/translate with "stream": true; generate_stream): the schema of one
    event, each ``data`` a JSON object (the README lists them); v1 names its events, the generate
    extension sends unnamed ones."""
    event: dict[str, Any] = {"type": "string", "enum": event_names} if event_names else {"type": "string"}
    return {"text/event-stream": {"schema": {
        "type": "object", "required": ["data"], "description": "one Server-Sent Event (see the README)",
        "properties": {"event": event, "data": {"type": "string", "contentMediaType": "application/json"}}}}}


def _stream_events(path: str) -> dict[str, Any] | None:
    if path == "/v1/translate":
        return _sse(["delta", "hypothesis", "result", "error"])
    return _sse(None) if path.endswith("/generate_stream") else None


def _keyed(path: str, settings: Settings, public: frozenset[str]) -> bool:
    return bool(settings.api_keys) and not path.startswith(tuple(settings.auth_exempt_paths)) and path not in public


# How a key is sent (service/auth.py), so that the reference's "Authorize" takes one for "Try it out".
_SECURITY_SCHEMES = {"apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                     "bearer": {"type": "http", "scheme": "bearer"}}


def _statuses(path: str, method: str, settings: Settings, public: frozenset[str]) -> set[int]:
    codes = {500}
    if _keyed(path, settings, public):
        codes.add(401)
    if method == "post":
        codes |= {413, 415, 422}
    if "{name}" in path:  # (a GET's path parameters are any string: no 422)
        codes.add(404)
    if path.endswith(("/ready", "/live")):
        codes.add(503)
    if _inference(path):
        codes |= {404, 499, 503, 504}
    if path.startswith("/v2/repository/models/"):
        codes |= {404, 409}
    return codes


def _drop_unreferenced(doc: dict[str, Any], schemas: dict[str, Any], names: tuple[str, ...]) -> None:
    """Remove each of ``names`` that nothing else in ``doc`` refers to, in order (a later one may be
    referred to only by an earlier one)."""
    for name in names:
        schema = schemas.pop(name, None)
        if schema is not None and f'"#/components/schemas/{name}"' in json.dumps(doc):
            schemas[name] = schema  # still in use


def _inference(path: str) -> bool:
    return path in _INFER_PATHS or path.endswith(("/infer", "/generate", "/generate_stream"))


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


def _spell_out(paths: dict[str, Any], template: str, bodies: dict[str, Any], answers: dict[str, Any]) -> None:
    """Replace ``template``'s POST with one operation per model, each with that model's body and
    answer."""
    operation = paths.pop(template)["post"]
    for name, schema in bodies.items():
        spelled = copy.deepcopy(operation)
        spelled["parameters"] = [p for p in spelled.get("parameters", []) if p["name"] != "name"]
        spelled["operationId"] = f"{operation['operationId']}_{''.join(c if c.isalnum() else '_' for c in name)}"
        spelled["summary"] = f"{operation.get('summary', '')} ({name})"
        spelled["requestBody"]["content"]["application/json"]["schema"] = schema
        spelled["responses"]["200"].setdefault("content", {})["application/json"] = {"schema": answers[name]}
        paths[template.replace("{name}", name)] = {"post": spelled}


_DOC_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "frame-ancestors 'none'",
                "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}


def install(app: FastAPI, settings: Settings, public_paths: frozenset[str]) -> None:
    """Replace the app's OpenAPI builder with one that adds the error statuses and the request
    rules: built once, and again after the served models change (load/unload, HTTP or gRPC)."""
    built_for = -1  # the registry generation the cached document describes

    def openapi() -> dict[str, Any]:
        nonlocal built_for
        registry = getattr(app.state, "registry", None)
        generation = registry.generation if registry is not None else -1
        if app.openapi_schema is None or built_for != generation:
            # behind a proxy that strips SEQSERVE_ROOT_PATH, "Try it out" and generated clients call
            # through the prefix
            servers = [{"url": settings.root_path}] if settings.root_path else None
            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes,
                              servers=servers)
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            if settings.api_keys:
                doc["components"]["securitySchemes"] = _SECURITY_SCHEMES
            schemas.setdefault("ErrorBody", ErrorBody.model_json_schema())
            ref = {"$ref": "#/components/schemas/ErrorBody"}
            answers = response_schemas.answers()
            for path, operations in doc.get("paths", {}).items():
                for method, operation in operations.items():
                    _hoist_defs(operation.get("requestBody", {}), schemas)
                    if _keyed(path, settings, public_paths):  # either one
                        operation["security"] = [{"apiKey": []}, {"bearer": []}]
                    responses = operation.setdefault("responses", {})
                    stream = _stream_events(path)
                    if stream is not None:
                        ok = responses.setdefault("200", {"description": "Successful Response"})
                        if path == "/v1/translate":  # JSON, or events when the body asks for a stream
                            ok.setdefault("content", {}).update(stream)
                        else:  # generate_stream answers events whatever the body says
                            ok["content"] = stream
                    if method != "post":  # FastAPI's for path parameters, which a GET never fails on
                        responses.pop("422", None)
                    if _inference(path):
                        operation.setdefault("parameters", []).append(_TIMEOUT_HEADER)
                    for code in sorted(_statuses(path, method, settings, public_paths)):
                        entry = responses.setdefault(str(code), {"description": _DESCRIPTIONS[code]})
                        # FastAPI's own 422 schema (HTTPValidationError) is not what the server sends
                        entry["content"] = {"application/json": {"schema": ref}}
                    if path in answers:  # readiness answers 503 with its own body, not an error
                        for status in ("200", "503") if path.endswith(("/ready", "/live")) else ("200",):
                            responses[status]["content"] = {"application/json": {"schema": answers[path]}}
                        if path.endswith(("/ready", "/live")):
                            responses["503"]["description"] = "not ready (not live): the same body, false"
            for (path, method), schema in request_schemas.request_bodies(settings, registry).items():
                operation = doc["paths"][path][method]
                operation["requestBody"]["content"]["application/json"]["schema"] = schema
                names = request_schemas.model_names(path, registry)
                for parameter in operation.get("parameters", []):
                    if parameter["name"] == "name" and names:
                        parameter["schema"]["enum"] = names
            inferred = {m.name: response_schemas.infer(m) for m in registry.latest()} if registry else {}
            for template, bodies in request_schemas.infer_paths(settings, registry).items():
                _spell_out(doc["paths"], template, bodies, inferred)
            _drop_unreferenced(doc, schemas, _UNUSED)
            app.openapi_schema = doc
            built_for = generation
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    # The API reference pages. Their links are relative ("openapi.json" from /docs), so they load
    # at the root and under any prefix a proxy serves seqserve at; fastapi-offline's own pages
    # write root-relative links, which leave the prefix. The scripts are fastapi-offline's files.
    assets = "static-offline-docs"

    def hardened(page: HTMLResponse) -> HTMLResponse:
        # "Try it out" sends keys from these pages: no other site may frame them (clickjacking),
        # and their address goes to no other site
        page.headers.update(_DOC_HEADERS)
        return page

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return hardened(get_swagger_ui_html(openapi_url="openapi.json", title=f"{app.title} - Swagger UI",
                                            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
                                            swagger_css_url=f"{assets}/swagger-ui.css",
                                            swagger_favicon_url=f"{assets}/favicon.png"))

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return hardened(get_redoc_html(openapi_url="openapi.json", title=f"{app.title} - ReDoc",
                                       redoc_js_url=f"{assets}/redoc.standalone.js",
                                       redoc_favicon_url=f"{assets}/favicon.png", with_google_fonts=False))
