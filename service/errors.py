"""One error vocabulary for the whole API, rendered by one handler as JSON.

Every body is {"error": message, "code": ..., "field": ..., "limit": ...}; the "error" key is
what Open Inference Protocol clients read.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import RedirectResponse, Response
from starlette.routing import Match

from service.json_response import JSONResponse

# at most this many problems listed in a 422's ``details`` (schema errors, or bad texts)
MAX_DETAILS = 20


class ServiceError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, field: str | None = None, limit: Any = None,
                 headers: dict[str, str] | None = None, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.limit = limit
        self.headers = headers or {}
        self.details = details  # every problem found, the first being this one (service/inputs.py Problems)

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.message, "code": self.code}
        if self.field is not None:
            out["field"] = self.field
        if self.limit is not None:
            out["limit"] = self.limit
        if self.details is not None:
            out["details"] = self.details
        return out


class InvalidInput(ServiceError):
    status, code = 422, "invalid_input"


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class ModelNotFound(ServiceError):
    status, code = 404, "model_not_found"


class ModelControlRefused(ServiceError):
    """Model control is off (SEQSERVE_MODEL_CONTROL), or several worker processes would disagree."""

    status, code = 409, "model_control_refused"


class ModelLoadFailed(ServiceError):
    """A version in the repository cannot be loaded: the message names the file."""

    status, code = 409, "model_load_failed"


class Overloaded(ServiceError):
    status, code = 503, "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class NotReady(ServiceError):
    status, code = 503, "not_ready"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "1"})


class DeadlineExceeded(ServiceError):
    status, code = 504, "deadline_exceeded"


class ClientGone(ServiceError):
    """The client disconnected before its answer (nobody reads this; it only ends the handler)."""

    status, code = 499, "client_closed_request"


class InferenceFailed(ServiceError):
    """A fault inside the model run (not the client's input): only that batch fails."""

    status, code = 500, "inference_failed"


def internal_error(request_id: str) -> dict[str, Any]:
    """The body of a 500 for a fault nobody else answered (a bug): its traceback is in the log,
    under the request id it names."""
    return {"error": f"internal server error (request {request_id})", "code": "internal_error"}


def _field_path(loc: tuple[Any, ...]) -> str:
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


async def _service_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    field = _field_path(tuple(first.get("loc", ())))
    message = f"{field}: {first.get('msg', 'invalid value')}"
    body: dict[str, Any] = {}
    if first.get("type") == "json_invalid":
        context = first.get("ctx")
        message, field = json_problem(str(context.get("error", "")) if isinstance(context, dict) else ""), "body"
        if message.startswith("the body is not valid utf-8"):
            body["limit"] = "utf-8"  # as for a body not valid in the charset it declares
    details = [{"field": _field_path(tuple(e.get("loc", ()))), "message": e.get("msg")} for e in errors[:MAX_DETAILS]]
    return JSONResponse({"error": message, "code": "invalid_input", "field": field, **body, "details": details},
                        status_code=422)


def json_problem(parser_error: str) -> str:
    """The answer's message for a body the JSON parser refused, from the parser's own words: bytes
    that are not UTF-8 and a ``\\u`` escape of a lone surrogate are named as what they are (the
    second is JSON's grammar, RFC 8259 8.2, but no Unicode character a text can hold)."""
    where = parser_error[parser_error.find(" at line "):] if " at line " in parser_error else ""
    if parser_error.startswith("invalid unicode code point"):
        return f"the body is not valid utf-8: a byte{where} cannot be read"
    if "surrogate" in parser_error or "hex escape" in parser_error:
        return (f"request body is not valid JSON text: a \\u escape{where} names a lone surrogate (such as "
                "\\ud800), which is no Unicode character")
    return "request body is not valid JSON"


async def _client_gone(request: Request, _: Exception) -> JSONResponse:
    """The client left before its body was read (Starlette's ``request.body()`` raises): 499, logged
    as a client that went away, not as the 500 of an unhandled error."""
    return await _service_error(request, ClientGone("client closed the connection before its body was read"))


# Triton's shared-memory extension (perf_analyzer --shared-memory, tritonclient's
# register_system_shared_memory) is not served: its REST routes' 404, its gRPC calls and a tensor
# that names a region say so in these words
SHARED_MEMORY_NOT_SERVED = "shared memory is not supported by this server; send tensors in the request"
_SHARED_MEMORY_ROUTES = ("/v2/systemsharedmemory", "/v2/cudasharedmemory")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc.__cause__, ClientDisconnect):  # FastAPI's 400 for a body the client never finished
        return await _client_gone(request, exc.__cause__)
    if exc.status_code == 400:
        # FastAPI's answer to a body it cannot decode (bytes that are not UTF-8): malformed JSON
        # is a 422 everywhere else, so here too
        return JSONResponse({"error": "request body is not valid JSON", "code": "invalid_input", "field": "body"},
                            status_code=422)
    if exc.status_code == 404 and "route" not in request.scope:  # no route took it
        redirect = slash_redirect(request)
        if redirect is not None:
            return redirect
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    body: dict[str, Any] = {"error": str(exc.detail), "code": code}
    if exc.status_code == 404 and request.url.path.startswith(_SHARED_MEMORY_ROUTES):
        body["error"] = f"{SHARED_MEMORY_NOT_SERVED} (JSON data, or the binary data extension)"
    headers = getattr(exc, "headers", None)
    if exc.status_code == 405 and headers and "Allow" in headers:
        # HEAD is answered wherever GET is (service/middleware.py), so Allow says so (RFC 9110 10.2.1)
        allowed = [m.strip() for m in headers["Allow"].split(",") if m.strip()]
        allowed += ["HEAD"] if "GET" in allowed and "HEAD" not in allowed else []
        headers = {**headers, "Allow": ", ".join(allowed)}
        body.update(field="method", limit=headers["Allow"])
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


def slash_redirect(request: Request) -> Response | None:
    """307 to the path one trailing slash off (/v1/sentiment/ -> /v1/sentiment) where a route
    serves that one, as Starlette's redirect_slashes does, but with a relative Location
    ("../sentiment"): Starlette's is absolute, built from the request's own scheme and Host, so
    behind a TLS proxy it sent clients to http:// (a POST body and its key re-sent in clear
    text), and under a path prefix out of it."""
    path = request.scope["path"]  # as routed: seqserve's root_path is never part of it (service/middleware.py)
    if path == "/":
        return None
    other = path[:-1] if path.endswith("/") else path + "/"
    probe = {**request.scope, "path": other}
    if not any(route.matches(probe)[0] is not Match.NONE for route in request.app.router.routes):
        return None
    last = other.rstrip("/").rsplit("/", 1)[-1]
    location = f"../{last}" if path.endswith("/") else f"{last}/"
    query = request.url.query
    return RedirectResponse(f"{location}?{query}" if query else location, status_code=307)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
