"""uvicorn's httptools protocol, stamping each request's arrival into its ASGI scope.

A request's latency counts from when the server began parsing it (``time.perf_counter()`` in
``scope["extensions"]["seqserve.arrival"]["at"]``), not from when the app starts on it. The two differ
under a burst: every request parsed in one pass of the event loop waits in the loop's ready
queue for all those before it (measured in a 1,000-request burst: 842 requests started in one
788 ms iteration), and that wait is part of what the client sees. The access log's
``latency_ms`` and ``seqserve_request_latency_seconds`` count from the stamp
(service/middleware.py).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# the ASGI scope extension holding the stamp: {"at": time.perf_counter()}
ARRIVAL = "seqserve.arrival"


def arrived_at(scope: Mapping[str, Any]) -> float | None:
    """When the server began parsing this request (``time.perf_counter()``); None if not stamped
    (another server, a test client)."""
    arrival = scope.get("extensions", {}).get(ARRIVAL)
    return arrival["at"] if arrival else None


class ArrivalStampingProtocol(HttpToolsProtocol):
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope.setdefault("extensions", {})[ARRIVAL] = {"at": time.perf_counter()}
