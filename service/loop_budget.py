"""At most ``per_pass`` requests start their work in one pass of the event loop.

In a burst uvicorn parses every request that has arrived in one pass of the event loop, and the
next pass runs each of them, one after another, up to its first real wait: validation,
tokenising, admission and, for a refusal, the whole answer. In the 1,000-request translation
burst that was one pass of 788 ms with 842 requests in it, while every timer, every decode
thread's hand-over (answers, stream steps) and every other connection waited behind them. Here a
request beyond the pass's share waits its turn (first come, first served) and each later pass
lets the next ``per_pass`` in, so everything else runs in between. The requests' own latency
hardly moves: they waited in the loop's ready queue before, they wait here now, and it counts
from their arrival either way (service/http_protocol.py).

Being the app's outermost layer, it is also where a request stops counting as arriving for its
model (``early_refusal.release``): from here admission counts the texts it brings. It is always
installed; ``per_pass`` 0 lets every request start at once.
"""

from __future__ import annotations

import asyncio
import collections

from starlette.types import ASGIApp, Receive, Scope, Send

from service import early_refusal


class LoopBudgetMiddleware:
    def __init__(self, app: ASGIApp, per_pass: int) -> None:
        self.app = app
        self.per_pass = per_pass
        self._started = 0  # requests let in since the last pass began
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._armed = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                if self.per_pass:
                    await self._take_turn()
            finally:
                # from here the app works on it: admission counts what it brings, not its arrival
                early_refusal.release(scope)
        await self.app(scope, receive, send)

    async def _take_turn(self) -> None:
        """Start now if this pass has room and nobody waits, else wait in line for a later pass."""
        if self._started < self.per_pass and not self._waiting:
            self._started += 1
        else:
            turn = asyncio.get_running_loop().create_future()
            self._waiting.append(turn)
            self._arm()
            await turn
        self._arm()

    def _arm(self) -> None:
        if not self._armed:
            self._armed = True
            asyncio.get_running_loop().call_soon(self._next_pass)

    def _next_pass(self) -> None:
        """Once per loop pass while requests are starting or waiting: the next ``per_pass``
        waiting requests are let in (they run in the next pass, before later arrivals)."""
        self._armed = False
        self._started = 0
        while self._waiting and self._started < self.per_pass:
            turn = self._waiting.popleft()
            if not turn.done():  # done: cancelled, its connection's task ended
                turn.set_result(None)
                self._started += 1
        if self._waiting:
            self._arm()
