"""The API's JSON answers (inference, health, repository, errors, the protocol's refusals, the
401) and access-log lines: rendered by pydantic-core's serializer (Rust), which the API already
uses to parse request bodies, instead of the standard library's ``json.dumps``. Routes that
return plain dicts (metadata) keep FastAPI's own rendering.

Measured on the 2-core VM (docs/benchmarks.md, stop 23): a sentiment answer 0.7 µs against 5.0 µs,
and JSON encoding was ~4% of the event loop's time at 64 sentiment clients (py-spy --gil); with
the access-log lines, the event loop's CPU per request fell 8% and 14% in two A/B runs. The
output is compact UTF-8, as Starlette's JSONResponse wrote it. A NaN or an
infinity (no model output should hold one) is written as null, where ``json.dumps`` with
``allow_nan=False`` raised and the client got a 500.
"""

from __future__ import annotations

from typing import Any

from pydantic_core import to_json
from starlette.responses import JSONResponse as _StarletteJSONResponse


def dumps(content: Any) -> bytes:
    """``content`` (JSON-serialisable Python values) as compact UTF-8 JSON."""
    return to_json(content, inf_nan_mode="null")


class JSONResponse(_StarletteJSONResponse):
    def render(self, content: Any) -> bytes:
        return dumps(content)
