"""Optional API keys: `Authorization: Bearer <key>` or `X-API-Key: <key>`.

Off unless SEQSERVE_API_KEYS is set. Health and metrics are exempt by default so that probes
and scrapers need no secret (prefixes, SEQSERVE_AUTH_EXEMPT_PATHS); the demo page's files are
exempt by exact path only (``public_paths``), so that no prefix opens anything else. Keys are
compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

from starlette.types import Scope


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


UNAUTHORIZED: dict[str, Any] = {"error": "missing or invalid API key (Authorization: Bearer <key> or X-API-Key)",
                                "code": "unauthorized", "field": "Authorization"}


class ApiKeys:
    """Which HTTP requests need a key and whether they carry one. service/middleware.py asks on the
    head alone, before any body is read or decompressed: a client without a key holds no buffer
    and costs no gunzip (it could hold 1 MiB per connection for the request timeout)."""

    def __init__(self, keys: list[str], exempt_paths: list[str], public_paths: frozenset[str] = frozenset()) -> None:
        self.keys = [k.encode() for k in keys if k]
        self.exempt = tuple(exempt_paths)
        self.public = public_paths

    def refuses(self, scope: Scope, headers: Mapping[bytes, bytes]) -> bool:
        """``headers``: the scope's, as a mapping (the middleware has built it already)."""
        if not self.keys or scope["path"].startswith(self.exempt) \
                or (scope["method"] in ("GET", "HEAD") and scope["path"] in self.public):
            return False
        return not key_matches(headers.get(b"x-api-key"), headers.get(b"authorization"), self.keys)
