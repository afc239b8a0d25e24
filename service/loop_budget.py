"""At most ``per_pass`` requests are parsed in one pass of the event loop.

In a burst, one pass of the event loop used to read every connection that had a request waiting,
and each of them ran up to its first real wait: parsing, and then either the app's task
(validation, tokenising, admission, for a refusal the whole answer) or, while its model is full,
the refusal answered in the protocol's own callback (service/early_refusal.py). In the
1,000-request translation burst that was one pass of 219 ms with 917 refusals in it (timed on
asyncio's own loop; ~170 us each under uvloop), while every timer and decode thread's hand-over
waited behind them (docs/benchmarks.md, stop 23).

Here the server's protocol (service/http_protocol.py) asks for a turn when a request's first
bytes arrive, before it parses them. Past the pass's share the connection keeps the bytes, stops
reading and waits in line; first come, first served, each later pass lets the next ``per_pass``
in (for at most ``TURNS_SECONDS_PER_PASS``), so everything else runs in between. Health checks
skip the line. The app's tasks are bounded with it: a pass starts at
most the tasks of the requests parsed in the pass before.

A request's latency counts its wait for a turn: its arrival stamp is when its bytes were read.
``per_pass`` 0 lets every request start at once.

While requests wait in line, the model threads give way (``give_way``): before a turn of work,
which would take the GIL and a core from the event loop, a batch worker or decode lane that has
just done one waits for the line to empty, at most ``GIVE_WAY_SECONDS`` (50 ms). Admission
decisions and answers come first; while a line lasts, each model thread still does a turn per
50 ms at least. In the translation burst the event loop had spent about half of its busy time
waiting for the GIL, which the decode threads held (py-spy --native); giving way for as long as
the last turn took (so work went on at half speed at worst) cut the refusals' p99 by about a
third (docs/benchmarks.md, stop 24). Waiting for the line itself (stop 37) cut it by about a
third again (p99 103-152 to 75-85 ms, three runs each), while sentiment and greedy translation
at 64 clients served as many requests as before (a line forms in bursts, not under steady load).
The price is paid while a line lasts: the models do a turn per 50 ms at least, so fewer queue
places come free and fewer of a burst's requests are admitted (18-24 of the burst's 1,000
against 33-40; the mixed overload scenario's results were within its noise).
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable
from typing import Protocol

# a pass lets the waiting in for at most this long (each turn parses a request and, for a refusal,
# answers it: ~60 us alone, several times that while decode threads share the GIL)
TURNS_SECONDS_PER_PASS = 0.005
# a model thread gives way to the line for at most this long before each turn of work
GIVE_WAY_SECONDS = 0.05

# called by a model thread before a turn of work, after one that did some; returns the seconds
# it waited
GiveWay = Callable[[], float]


class Waiter(Protocol):
    def take_turn(self) -> bool:
        """Its turn has come: start now. False if it no longer waits (its connection closed):
        the turn goes to the next in line."""
        ...  # pragma: no cover


class PassBudget:
    def __init__(self, per_pass: int) -> None:
        self.per_pass = per_pass
        self._started = 0  # requests started since the last pass began
        self._waiting: collections.deque[Waiter] = collections.deque()
        self._armed = False
        # set while nobody waits for a turn: the model threads give way to the line (``give_way``)
        self._clear = threading.Event()
        self._clear.set()

    def admit(self, waiter: Waiter) -> bool:
        """Whether ``waiter`` may start now (counted in this pass); if not, it waits in line and
        its ``take_turn`` is called in a later pass."""
        if not self.per_pass:
            return True
        self._arm()
        if self._started < self.per_pass and not self._waiting:
            self._started += 1
            return True
        if not self._waiting:
            self._clear.clear()
        self._waiting.append(waiter)
        return False

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _arm(self) -> None:
        if not self._armed:
            self._armed = True
            asyncio.get_running_loop().call_soon(self._next_pass)

    def _next_pass(self) -> None:
        """Once per loop pass while requests start or wait: a new share, its first turns to the
        waiting (they run here, before the pass's new arrivals)."""
        self._armed = False
        self._started = 0
        until = time.perf_counter() + TURNS_SECONDS_PER_PASS
        try:
            while self._waiting and self._started < self.per_pass and time.perf_counter() < until:
                if self._waiting.popleft().take_turn():
                    self._started += 1
        finally:  # whatever a turn raised, the rest of the line keeps its turns
            if self._waiting or self._started:
                self._arm()
            if not self._waiting:
                self._clear.set()

    def give_way(self) -> float:
        """From a model thread, before its next turn of work: while requests wait in line, wait
        for the line to empty, for at most ``GIVE_WAY_SECONDS``. The seconds waited (0.0
        without a line)."""
        if self._clear.is_set():
            return 0.0
        started = time.perf_counter()
        self._clear.wait(GIVE_WAY_SECONDS)
        return time.perf_counter() - started
