"""The graceful shutdown's one deadline, for HTTP, gRPC and the models together.

SIGTERM starts it (service/server.py) and fixes the deadline, SEQSERVE_DRAIN_TIMEOUT_S away: gRPC
refuses new calls at once and lets the accepted ones finish, while uvicorn waits for the HTTP
requests in flight; the models keep taking work meanwhile (an HTTP request accepted before the
signal may still be reading its body, or waiting for its turn to be parsed), and once HTTP is
done (the lifespan's end) they finish what they hold, within what is left of the deadline.
(Before, gRPC and the models began their own full timeout only after the HTTP wait, so a
shutdown took up to twice it, past a pod's grace period.) What is still in flight at the
deadline is answered, not dropped: an HTTP request 503 ``not_ready`` (service/middleware.py), a
gRPC call UNAVAILABLE (service/grpc_v2.py); they are counted here, and the shutdown's log line
says how many.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from service.errors import NotReady

if TYPE_CHECKING:
    from service.grpc_v2 import GrpcServer
    from service.registry import ModelRegistry


class Drain:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.registry: ModelRegistry | None = None  # set once the models are loaded and serve
        self.grpc: GrpcServer | None = None
        self.http_cut_off = 0  # HTTP requests answered 503 at the deadline
        self.grpc_cut_off = 0  # gRPC calls (or stream requests) answered UNAVAILABLE at it
        self.deadline: float | None = None  # time.monotonic() when it passes; None before the signal
        self.cut_short = False  # a second Ctrl+C: the deadline is now (``passed`` from then on)
        self._grpc_stopped: asyncio.Future[None] | None = None
        self._cut = asyncio.Event()
        self._grpc_cut: asyncio.Future[None] | None = None

    @property
    def started(self) -> bool:
        return self.deadline is not None

    def passed(self, slack_s: float = 0.1) -> bool:
        """The deadline has passed (within ``slack_s``: gRPC's own timer may fire a little early),
        or a second Ctrl+C cut the drain short."""
        return self.cut_short or (self.deadline is not None and time.monotonic() >= self.deadline - slack_s)

    def cut_off(self) -> NotReady:
        """The answer to an HTTP request still in flight when the deadline passed (uvicorn cancels
        it then), counted."""
        self.http_cut_off += 1
        why = "a second Ctrl+C cut its drain short" if self.cut_short else \
            f"its drain timeout, {self.timeout_s:g} s, passed"
        return NotReady(f"the server shut down before this request finished ({why}): retry it")

    def start(self) -> None:
        """The signal: the deadline is fixed and gRPC begins to stop (a second call does nothing)."""
        if self.deadline is not None:
            return
        self.deadline = time.monotonic() + self.timeout_s
        if self.grpc is not None:
            self._grpc_stopped = asyncio.ensure_future(self.grpc.stop(self.timeout_s))

    def cut_now(self) -> None:
        """A second Ctrl+C (on the event loop): the deadline is now for HTTP (uvicorn stops waiting),
        gRPC (its open calls are cancelled, and answered UNAVAILABLE) and the models alike."""
        self.cut_short = True
        self.start()
        self.deadline = time.monotonic()
        self._cut.set()
        if self.grpc is not None:
            self._grpc_cut = asyncio.ensure_future(self.grpc.server.stop(None))  # no grace: what is open ends now

    async def finish(self) -> bool:
        """Once HTTP is done: the models finish their work within what is left of the deadline
        (all of the timeout when nothing called ``start``: an embedding app, a test client), or
        until a second Ctrl+C, and gRPC's stop ends. True when every model's accepted work
        finished in time."""
        self.start()
        assert self.deadline is not None
        finished = True
        if self.registry is not None:
            draining = asyncio.ensure_future(self.registry.drain(max(self.deadline - time.monotonic(), 0.0)))
            cut = asyncio.ensure_future(self._cut.wait())
            await asyncio.wait([draining, cut], return_when=asyncio.FIRST_COMPLETED)
            cut.cancel()
            if draining.done():
                finished = draining.result()
            else:
                draining.cancel()
                finished = False
        for stopping in (self._grpc_stopped, self._grpc_cut):
            if stopping is not None:
                await stopping
        return finished

    def summary(self, finished: bool) -> str:
        """The shutdown's log line."""
        if finished and not self.cut_short and not self.http_cut_off and not self.grpc_cut_off:
            return "all accepted work finished"
        why = "a second Ctrl+C cut the drain short" if self.cut_short else \
            f"the drain timeout ({self.timeout_s:g} s) passed"
        return (f"{why}: {self.http_cut_off} HTTP request(s) still in flight answered 503, {self.grpc_cut_off} "
                "gRPC call(s) UNAVAILABLE")
