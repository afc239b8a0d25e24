"""A Server-Sent Events answer as a plain ASGI callable.

Starlette's StreamingResponse runs every response in an anyio task group beside a disconnect
listener, and sends each item of its iterator on its own (plus an empty closing chunk). With 64
streams of tens of small chunks each, that machinery is paid by the event loop and, through the
GIL, by the decode threads. Here a chunk is whatever the stream has ready (one write, however
many events), the last one closes the response in the same write, and the disconnect listener is
one plain task that tells the stream to stop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from service.errors import ServiceError

Chunks = AsyncGenerator[tuple[bytes, bool], None]  # (body, more to come)
# the ASGI scope extension a stream sets to how it ends on an error of the server's (its stream's
# error event, as the route renders one): the request layers end a stream the drain's deadline
# cuts off with it (service/middleware.py), so the client reads an error, not a finished stream
LAST_EVENT = "seqserve.last_event"
# the ASGI scope extension a stream sets to the status its end counts as, where that is not its
# status line's 200: the request layers count and log it so. 499 when its client left before the
# end (nobody read the whole answer), so that an operator finds abandoned streams one by one; the
# error's status when it ended with an error event (504 for a deadline, 500 for a failed
# inference), so that a stream that failed is not counted and logged as a success
ENDED_WITH = "seqserve.ended_with"
_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no")]  # nginx: do not buffer the stream


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":  # after the body, only the disconnect is left
        pass


class EventStreamResponse(Response):
    """Status 200 with ``chunks`` as the body; ``on_disconnect`` is called if the client leaves
    before the end (it should end ``chunks`` soon, e.g. by stopping the work behind them). A
    Response, so that FastAPI's own routes pass it through as it is."""

    media_type = "text/event-stream"

    def __init__(self, chunks: Chunks, on_disconnect: Callable[[], None],
                 failed: Callable[[ServiceError], bytes] | None = None) -> None:
        # not Response.__init__: there is no body to render; these are what Starlette reads
        self.status_code = 200
        self.background = None
        self.raw_headers = list(_HEADERS)
        self.chunks = chunks
        self.on_disconnect = on_disconnect
        self.failed = failed  # the stream's error event for an error (LAST_EVENT)
        self.ended_with = 200  # set by the producer of ``chunks`` to the status of an error event it ends with

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        listener: asyncio.Future[None] | None = None
        more = True
        if self.failed is not None:
            scope.setdefault("extensions", {})[LAST_EVENT] = self.failed
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            listener = asyncio.ensure_future(_until_disconnect(receive))
            listener.add_done_callback(_client_left(self.on_disconnect))
            async for body, more in self.chunks:
                await send({"type": "http.response.body", "body": body, "more_body": more})
                if not more:
                    break
            if more:  # ended early (the client left): close the response
                self.ended_with = 499
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            if self.ended_with != 200:
                scope.setdefault("extensions", {})[ENDED_WITH] = self.ended_with
        finally:
            if listener is not None:
                listener.cancel()
            if more:  # not to its end (a failed send, a cancelled task): stop the work behind it
                self.on_disconnect()
            await self.chunks.aclose()


def _client_left(on_disconnect: Callable[[], None]) -> Callable[[asyncio.Future[None]], None]:
    """The listener's end: the client left (or the server's ``receive`` failed, read as gone)."""

    def done(listener: asyncio.Future[None]) -> None:
        if not listener.cancelled():
            listener.exception()  # retrieved, so that a failed receive is not logged as lost
            on_disconnect()

    return done
