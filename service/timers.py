"""Timers re-armed on every request, without a loop timer per request.

A timer on the event loop costs ~4 us of its CPU to start and cancel (uvloop's ``call_later``
and ``cancel``: a handle, libuv's heap in and out; `python -m loadtests.timer_cost`), and each
request had two: its connection's keep-alive timeout, cancelled when the request arrived and
started again when it was answered, and its deadline, started when its texts were queued and
cancelled when they were answered. Both almost never fire. So:

- ``IdleTimeout``: a connection's keep-alive (or first-request) timeout keeps one loop timer,
  started when none is pending; a request only notes when the idle time began or that it ended.
  When the timer fires it closes the connection if it has been idle long enough, else it starts
  again for the time left.
- ``Deadlines``: deadlines that fall in the same ``grain_s`` share one loop timer, which calls
  each of their callbacks still pending; a request adds its callback to its group and removes
  it when answered, and the last one removed takes the group's timer with it. It fires up to
  ``grain_s`` late.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Callable
from typing import Any

DEADLINE_GRAIN_S = 0.005  # how late a deadline may fire: one loop timer per 5 ms of deadlines


class IdleTimeout:
    """Calls ``on_timeout`` once a connection has been idle for the delay of the last ``start``.

    ``start(delay)``: the connection is idle from now (answered, or just opened); ``stop()``: it
    is busy (bytes arrived); ``cancel()``: it is gone, and no timer is left pending."""

    __slots__ = ("_due", "_loop", "_on_timeout", "_timer", "_timer_at")

    def __init__(self, loop: asyncio.AbstractEventLoop, on_timeout: Callable[[], None]) -> None:
        self._loop = loop
        self._on_timeout = on_timeout
        self._due: float | None = None  # loop.time() at which it times out; None while busy
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    @property
    def started(self) -> bool:
        return self._due is not None

    def start(self, delay: float) -> None:
        due = self._loop.time() + delay
        self._due = due
        if due < self._timer_at:  # the pending timer would fire too late for this one (or none is)
            self._arm(due)

    def stop(self) -> None:
        self._due = None

    def cancel(self) -> None:
        self._due = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = self._loop.call_at(at, self._fire), at

    def _fire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        due = self._due
        if due is None:  # busy now: the next start arms a timer again
            return
        if due > self._loop.time():  # idle again since the timer was armed: not long enough yet
            self._arm(due)
            return
        self._due = None
        self._on_timeout()


class Deadlines:
    """Callbacks at deadlines (``loop.time()`` values), grouped by ``grain_s`` into one loop timer
    per group. ``add`` returns a key for ``discard``, which drops a callback that is no longer
    due (its request was answered); a group whose callbacks are all dropped goes with its timer,
    so that nothing waits for deadlines nobody has any more (a client may ask for an hour)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, grain_s: float = DEADLINE_GRAIN_S) -> None:
        self.loop = loop
        self._grain_s = grain_s
        self._groups: dict[int, dict[int, tuple[Callable[[Any], None], Any]]] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}  # each group's
        self._keys = itertools.count()

    def __len__(self) -> int:
        return sum(len(group) for group in self._groups.values())

    def add(self, at: float, callback: Callable[[Any], None], arg: Any) -> tuple[int, int]:
        """Call ``callback(arg)`` at ``at`` (at most ``grain_s`` later), unless discarded first."""
        slot = math.ceil(at / self._grain_s)
        group = self._groups.get(slot)
        if group is None:
            group = self._groups[slot] = {}
            self._timers[slot] = self.loop.call_at(slot * self._grain_s, self._fire, slot)
        key = next(self._keys)
        group[key] = (callback, arg)
        return slot, key

    def discard(self, handle: tuple[int, int]) -> None:
        slot, key = handle
        group = self._groups.get(slot)
        if group is not None and group.pop(key, None) is not None and not group:
            del self._groups[slot]
            self._timers.pop(slot).cancel()

    def _fire(self, slot: int) -> None:
        self._timers.pop(slot, None)
        for callback, arg in self._groups.pop(slot, {}).values():
            callback(arg)
