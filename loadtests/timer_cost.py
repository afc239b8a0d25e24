"""What a request's timers cost the event loop: a loop timer each against service/timers.py.

    python -m loadtests.timer_cost [--requests 100000] [--rounds 5]

Each round runs the same requests' timer work both ways on the event loop (uvloop where
installed, as the server runs), one after the other, and prints the loop thread's CPU a
request (``time.thread_time``), the median of the rounds:

- a keep-alive timeout: ``call_later`` when a request is answered, ``cancel`` when the next one
  arrives (uvicorn's), against ``IdleTimeout.start`` and ``stop``;
- a deadline: ``call_at`` when its texts are queued, ``cancel`` when they are answered, against
  ``Deadlines.add`` and ``discard`` (requests arriving over the run, as at ~3,000 a second, 64 of
  them in flight: each answered 64 requests after it came).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import time
from collections.abc import Callable

from service.timers import Deadlines, IdleTimeout

_TIMEOUT_S = 30.0
_IN_FLIGHT = 64  # requests whose deadlines are pending at once (64 closed-loop clients)


def _nothing(*_: object) -> None:
    pass


def loop_timers(loop: asyncio.AbstractEventLoop, requests: int) -> None:
    in_flight: collections.deque[asyncio.TimerHandle] = collections.deque()
    for _ in range(requests):
        keep_alive = loop.call_later(75.0, _nothing)
        keep_alive.cancel()
        in_flight.append(loop.call_at(loop.time() + _TIMEOUT_S, _nothing, None))
        if len(in_flight) > _IN_FLIGHT:  # the oldest request is answered
            in_flight.popleft().cancel()
    for deadline in in_flight:
        deadline.cancel()


def shared_timers(loop: asyncio.AbstractEventLoop, requests: int) -> None:
    idle = IdleTimeout(loop, _nothing)
    deadlines = Deadlines(loop)
    in_flight: collections.deque[tuple[int, int]] = collections.deque()
    # ~3,000 requests a second: the deadlines move 1/3 ms a request, as they would under load
    start = loop.time()
    for i in range(requests):
        idle.start(75.0)
        idle.stop()
        in_flight.append(deadlines.add(start + i / 3000 + _TIMEOUT_S, _nothing, None))
        if len(in_flight) > _IN_FLIGHT:
            deadlines.discard(in_flight.popleft())
    for handle in in_flight:
        deadlines.discard(handle)
    idle.cancel()


async def _round(requests: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    ways: dict[str, Callable[[asyncio.AbstractEventLoop, int], None]] = {
        "a loop timer each": loop_timers, "service/timers.py": shared_timers}
    us = {}
    for name, way in ways.items():
        started = time.thread_time()
        way(loop, requests)
        us[name] = (time.thread_time() - started) / requests * 1e6
    return us


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    try:
        import uvloop

        run: Callable[..., dict[str, float]] = uvloop.run
    except ImportError:
        run = asyncio.run
    rounds = [run(_round(args.requests)) for _ in range(args.rounds)]
    print(f"event loop CPU a request for its keep-alive timeout and its deadline ({args.rounds} rounds, "
          f"{args.requests} requests each, median):")
    for name in rounds[0]:
        print(f"  {name:20s} {statistics.median(r[name] for r in rounds):6.2f} us")


if __name__ == "__main__":
    main()
