"""CORS, answered in the API's error vocabulary.

Starlette's middleware answers a preflight it refuses (an origin, method or header not allowed)
with a plain-text 400, "Disallowed CORS origin, method". A browser reads only the status, but
whoever debugs the deployment with curl reads the body: here it is the API's JSON error, naming
the request header at fault and what is allowed.

A preflight is answered here, outside the request layers (it needs no key: service/middleware.py
runs inside this one), so it gets its request id and its access-log line and metrics here, with
the same functions, as route "cors_preflight".
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.access_log import AnswerWithId, record_request, request_id_of
from service.errors import ServiceError
from service.http_protocol import arrived_at
from service.json_response import JSONResponse

_REFUSED = "Disallowed CORS "  # how Starlette's refusal begins, followed by what it refused


class PreflightRefused(ServiceError):
    status, code = 400, "cors_preflight_refused"


PREFLIGHT_ROUTE = "cors_preflight"  # the route label of a preflight (a bounded set, as the other labels)


class JsonCORSMiddleware(CORSMiddleware):
    def __init__(self, app: ASGIApp, allow_origins: Sequence[str] = (), allow_methods: Sequence[str] = ("GET",),
                 allow_headers: Sequence[str] = (), expose_headers: Sequence[str] = (),
                 log_requests: bool = True) -> None:
        super().__init__(app, allow_origins=allow_origins, allow_methods=allow_methods, allow_headers=allow_headers,
                         expose_headers=expose_headers)
        self.log_requests = log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "OPTIONS":
            await super().__call__(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if b"origin" not in headers or b"access-control-request-method" not in headers:  # not a preflight
            await super().__call__(scope, receive, send)
            return
        started = arrived_at(scope) or time.perf_counter()
        answer = AnswerWithId(send, request_id_of(headers))
        try:
            await super().__call__(scope, receive, answer.send)
        finally:
            record_request("OPTIONS", scope["path"], PREFLIGHT_ROUTE, answer.status, time.perf_counter() - started,
                           answer.request_id, self.log_requests)

    def preflight_response(self, request_headers: Headers) -> Response:
        answer = super().preflight_response(request_headers)
        text = bytes(answer.body).decode()
        if answer.status_code == 200 or not text.startswith(_REFUSED):
            return answer
        failed = text.removeprefix(_REFUSED).split(", ")[0]
        field, limit = {
            "method": ("Access-Control-Request-Method", sorted(self.allow_methods)),
            "headers": ("Access-Control-Request-Headers", sorted(self.allow_headers)),
            "private-network": ("Access-Control-Request-Private-Network", False),
        }.get(failed, ("Origin", None))  # not the allowed origins: a stranger learns no internal host name
        error = PreflightRefused(f"the preflight's {field} is not allowed by CORS ({text})", field, limit)
        headers = {k: v for k, v in answer.headers.items() if k not in ("content-length", "content-type")}
        return JSONResponse(error.body(), status_code=error.status, headers=headers)
