"""The graceful shutdown's one deadline, for HTTP, gRPC and the models together.

SIGTERM starts it (service/server.py): gRPC refuses new calls and lets the accepted ones finish,
and the models finish their accepted work, while uvicorn waits for the HTTP requests in flight;
all within SEQSERVE_DRAIN_TIMEOUT_S of the signal. (Before, gRPC and the models began draining
only after the HTTP wait was over, so a shutdown took up to twice the timeout, past a pod's grace
period.) What is still in flight at the deadline is answered, not dropped: an HTTP request 503
``not_ready`` (service/middleware.py), a gRPC call UNAVAILABLE (service/grpc_v2.py); they are
counted here, and the shutdown's log line says how many.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

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
        self._task: asyncio.Task[bool] | None = None

    @property
    def started(self) -> bool:
        return self._task is not None

    def start(self) -> asyncio.Task[bool]:
        """Begin draining now, if not begun (a second call returns the same task): True when every
        model's accepted work finished in time."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        return self._task

    async def _run(self) -> bool:
        stopping = [self.grpc.stop(self.timeout_s)] if self.grpc is not None else []
        drained = [self.registry.drain(self.timeout_s)] if self.registry is not None else []
        *_, finished = await asyncio.gather(*stopping, *drained) if stopping or drained else (True,)
        return bool(finished)

    def summary(self, finished: bool) -> str:
        """The shutdown's log line."""
        if finished and not self.http_cut_off and not self.grpc_cut_off:
            return "all accepted work finished"
        return (f"the drain timeout ({self.timeout_s:g} s) passed: {self.http_cut_off} HTTP request(s) still in "
                f"flight answered 503, {self.grpc_cut_off} gRPC call(s) UNAVAILABLE")
