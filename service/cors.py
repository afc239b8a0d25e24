"""CORS, answered in the API's error vocabulary.

Starlette's middleware answers a preflight it refuses (an origin, method or header not allowed)
with a plain-text 400, "Disallowed CORS origin, method". A browser reads only the status, but
whoever debugs the deployment with curl reads the body: here it is the API's JSON error, naming
the request header at fault and what is allowed.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

from service.errors import ServiceError
from service.json_response import JSONResponse

_REFUSED = "Disallowed CORS "  # how Starlette's refusal begins, followed by what it refused


class PreflightRefused(ServiceError):
    status, code = 400, "cors_preflight_refused"


class JsonCORSMiddleware(CORSMiddleware):
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
