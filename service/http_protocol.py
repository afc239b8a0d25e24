"""uvicorn's httptools protocol, stamping each request's arrival into its ASGI scope.

A request's latency counts from when the server began parsing it (``time.perf_counter()`` in
``scope["extensions"]["seqserve.arrival"]["at"]``), not from when the app starts on it. The two differ
under a burst: every request parsed in one pass of the event loop waits in the loop's ready
queue for all those before it (measured in a 1,000-request burst: 842 requests started in one
788 ms iteration), and that wait is part of what the client sees. The access log's
``latency_ms`` and ``seqserve_request_latency_seconds`` count from the stamp
(service/middleware.py).

It also counts each inference request as arriving for its model from here, and answers in its
own callbacks the requests refused on arrival while a model is full (service/early_refusal.py):
the app never runs for them. The refusing instance comes from the
app's state (``app.state.early_refusal``, active while the app serves).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.admission import Admission

if TYPE_CHECKING:  # at run time the refusing instance comes from the app's state
    from service.early_refusal import EarlyRefusal, Refusal

# the ASGI scope extension holding the stamp: {"at": time.perf_counter()}
ARRIVAL = "seqserve.arrival"


def arrived_at(scope: Mapping[str, Any]) -> float | None:
    """When the server began parsing this request (``time.perf_counter()``); None if not stamped
    (another server, a test client)."""
    arrival = scope.get("extensions", {}).get(ARRIVAL)
    return arrival["at"] if arrival else None


class _Answered:
    """Stands in for uvicorn's request cycle while a refused request's body is read and dropped:
    its response is complete as far as the protocol's other callbacks are concerned."""

    response_complete = True

    class message_event:  # read as the cycle's asyncio.Event
        @staticmethod
        def set() -> None:
            pass


class _HeadWithBody:
    """The connection's transport as one request's cycle sees it: the response's head (status
    line and headers, which uvicorn writes as soon as the app starts its response) goes out with
    the response's first body write, in one send. On loopback each send cost ~50 us of the event
    loop (py-spy), and a plain answer needs one instead of two (a streamed one its first event
    with its head). Not for HEAD, whose answer has no body write to wait for."""

    def __init__(self, transport: asyncio.Transport, cycle: Any) -> None:
        self._transport = transport
        self._cycle = cycle
        self._hold = cycle.scope["method"] != "HEAD"
        self._head = b""

    def write(self, data: bytes) -> None:
        if self._head:
            data, self._head = self._head + data, b""
        elif self._hold and self._cycle.response_started:  # the first write of the response: its head
            self._hold = False
            self._head = bytes(data)
            return
        self._transport.write(data)

    def close(self) -> None:  # after a head without a body (a failing app): the head still goes out
        if self._head:
            self._transport.write(self._head)
            self._head = b""
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class ArrivalStampingProtocol(HttpToolsProtocol):
    _refusal: Refusal | None = None
    _closing = False  # a graceful shutdown began while a refused request's body was arriving

    def on_message_begin(self) -> None:
        # a refusal answered in the parser's callback armed the keep-alive timer; a next request in
        # the same read must stop it, as uvicorn's data_received does for one in a later read
        self._unset_keepalive_if_required()
        super().on_message_begin()
        self.arrived = time.perf_counter()
        self.scope.setdefault("extensions", {})[ARRIVAL] = {"at": self.arrived}

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        state = getattr(self.config.app, "state", None)  # None: another app (a test's)
        # not with uvicorn's own concurrency limit, whose 503 app would never release a place
        door = getattr(state, "early_refusal", None) if self.limit_concurrency is None else None
        self._door: EarlyRefusal | None = door

    def on_headers_complete(self) -> None:
        door = self._door
        admission = None
        # only on an idle connection (a request in flight answers first; the pipelined one waits
        # with reading paused), never for an upgrade, never while writes are backed up
        if door is not None and (self.cycle is None or self.cycle.response_complete) \
                and not self.parser.should_upgrade() and not self.flow.write_paused:
            found = door.look(self.parser.get_method(), self.url, self.headers)
            if isinstance(found, Admission):
                admission = found
            elif found is not None:
                self._refusal = found
                self.cycle = _Answered  # type: ignore[assignment]
                return
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is not before:  # a new request cycle, its task started with the app
            self.cycle.transport = _HeadWithBody(self.transport, self.cycle)  # type: ignore[assignment]
            if admission is not None:
                door.reserve(admission, cast("dict[str, Any]", self.scope))  # type: ignore[union-attr]

    def shutdown(self) -> None:
        # uvicorn closes a connection at once when its request cycle is complete, which the
        # placeholder cycle of a refusal says it is: a refusal still reading its body is answered
        # first, with "connection: close", as uvicorn lets an unfinished response finish
        if self._refusal is not None:
            self._closing = True
            return
        super().shutdown()

    def on_message_complete(self) -> None:
        refusal, self._refusal = self._refusal, None
        if refusal is None:
            super().on_message_complete()
            return
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive() \
            and not self._closing
        self.transport.write(refusal.answer(self.arrived, self.server_state.default_headers, keep_alive))
        if not keep_alive:
            self.transport.close()
        self.on_response_complete()
