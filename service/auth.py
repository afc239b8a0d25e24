"""Optional API keys: `Authorization: Bearer <key>` or `X-API-Key: <key>`.

Off unless SEQSERVE_API_KEYS is set. Health and metrics are exempt by default so that probes
and scrapers need no secret (prefixes, SEQSERVE_AUTH_EXEMPT_PATHS); the demo page's files are
exempt by exact path only (``public_paths``), so that no prefix opens anything else. Keys are
compared in constant time and never logged.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from service.json_response import dumps


def key_matches(x_api_key: bytes | None, authorization: bytes | None, keys: list[bytes]) -> bool:
    """Whether the key presented (``X-API-Key``, else ``Authorization: Bearer``) is one of ``keys``,
    compared in constant time. HTTP headers and gRPC metadata both come here."""
    presented = x_api_key
    auth = authorization or b""
    if presented is None and auth[:7].lower() == b"bearer ":
        presented = auth[7:].strip()
    if presented is None:
        return False
    return any(hmac.compare_digest(presented, key) for key in keys)


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: list[str], exempt_paths: list[str],
                 public_paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys if k]
        self.exempt = tuple(exempt_paths)
        self.public = public_paths

    def _authorised(self, scope: Scope) -> bool:
        headers = dict(scope["headers"])
        return key_matches(headers.get(b"x-api-key"), headers.get(b"authorization"), self.keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"].startswith(self.exempt) \
                or (scope["method"] in ("GET", "HEAD") and scope["path"] in self.public) or self._authorised(scope):
            await self.app(scope, receive, send)
            return
        body = dumps({"error": "missing or invalid API key (Authorization: Bearer <key> or X-API-Key)",
                      "code": "unauthorized", "field": "Authorization"})
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})
