"""service/timers.py: a connection's idle timeout and the requests' deadlines, on a real loop."""

from __future__ import annotations

import asyncio

from service.timers import Deadlines, IdleTimeout


async def _until(condition: object, timeout_s: float = 2.0) -> None:
    end = asyncio.get_running_loop().time() + timeout_s
    while not condition() and asyncio.get_running_loop().time() < end:  # type: ignore[operator]
        await asyncio.sleep(0.005)


def test_idle_timeout_fires_after_its_delay_of_idleness() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        fired: list[float] = []
        idle = IdleTimeout(loop, lambda: fired.append(loop.time()))
        started = loop.time()
        idle.start(0.05)
        await _until(lambda: fired)
        return fired[0] - started

    assert 0.04 <= asyncio.run(main()) < 0.5


def test_idle_timeout_counts_from_the_last_start_with_one_timer() -> None:
    """Busy and idle again before the first timer fires: it fires, finds the connection idle for
    less than the delay, and waits the rest; never while busy."""

    async def main() -> tuple[float, int, bool]:
        loop = asyncio.get_running_loop()
        fired: list[float] = []
        idle = IdleTimeout(loop, lambda: fired.append(loop.time()))
        idle.start(0.06)
        timers = 0
        real_call_at = loop.call_at

        def counting_call_at(when: float, callback: object, *args: object, **kwargs: object) -> asyncio.TimerHandle:
            nonlocal timers
            timers += getattr(callback, "__self__", None) is idle  # the idle timeout's, not the sleeps'
            return real_call_at(when, callback, *args, **kwargs)  # type: ignore[arg-type]

        loop.call_at = counting_call_at  # type: ignore[method-assign]
        await asyncio.sleep(0.04)
        for _ in range(100):  # requests answered on the connection: no new timer for any of them
            idle.stop()
            idle.start(0.06)
        last_start = loop.time()
        await _until(lambda: fired)
        busy = IdleTimeout(loop, lambda: fired.append(-1.0))
        busy.start(0.01)
        busy.stop()  # a request arrived: busy until answered
        await asyncio.sleep(0.05)
        return fired[0] - last_start, timers, -1.0 in fired

    waited, timers, fired_while_busy = asyncio.run(main())
    assert 0.05 <= waited < 0.5
    assert timers == 1  # the rest of the delay, when the first timer found it idle too briefly
    assert not fired_while_busy


def test_idle_timeout_cancelled_leaves_no_timer() -> None:
    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        fired: list[int] = []
        idle = IdleTimeout(loop, lambda: fired.append(1))
        idle.start(0.01)
        idle.cancel()
        assert not idle.started
        await asyncio.sleep(0.05)
        return fired

    assert asyncio.run(main()) == []


def test_an_earlier_start_rearms_the_timer() -> None:
    """A shorter delay than the pending timer's (a first request's deadline after a keep-alive)
    fires on time, not when the longer one would have."""

    async def main() -> float:
        loop = asyncio.get_running_loop()
        fired: list[float] = []
        idle = IdleTimeout(loop, lambda: fired.append(loop.time()))
        idle.start(10.0)
        started = loop.time()
        idle.start(0.02)
        await _until(lambda: fired)
        idle.cancel()
        return fired[0] - started

    assert asyncio.run(main()) < 0.5


def test_deadlines_fire_each_callback_once_in_its_group_and_not_discarded_ones() -> None:
    async def main() -> tuple[list[str], int]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop, grain_s=0.01)
        called: list[str] = []
        now = loop.time()
        kept = [deadlines.add(now + 0.02 + i * 0.001, called.append, f"kept {i}") for i in range(5)]
        dropped = deadlines.add(now + 0.021, called.append, "answered in time")
        later = deadlines.add(now + 5.0, called.append, "not yet")
        deadlines.discard(dropped)
        await _until(lambda: len(called) == 5)
        await asyncio.sleep(0.03)
        pending = len(deadlines)
        deadlines.discard(later)
        deadlines.discard(later)  # twice: no error
        assert len(kept) == 5
        return called, pending

    called, pending = asyncio.run(main())
    assert sorted(called) == [f"kept {i}" for i in range(5)]
    assert pending == 1


def test_deadlines_fire_no_earlier_than_due_and_at_most_a_grain_late() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop, grain_s=0.02)
        fired: list[float] = []
        due = loop.time() + 0.05
        deadlines.add(due, lambda _: fired.append(loop.time()), None)
        await _until(lambda: fired)
        return fired[0] - due

    late = asyncio.run(main())
    assert -0.002 <= late < 0.3  # the loop's clock has millisecond steps (uvloop)


def test_deadlines_all_discarded_leave_no_group_and_no_timer() -> None:
    """Answered requests leave nothing behind: with an hour's deadlines (a client may ask for
    one) a group and its loop timer held on for the hour after its requests were answered."""

    async def main() -> tuple[int, int, int]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop, grain_s=0.005)
        now = loop.time()
        handles = [deadlines.add(now + 3600 + i * 0.001, lambda _: None, None) for i in range(50)]
        groups = len(deadlines._groups)
        for handle in handles:
            deadlines.discard(handle)
        return groups, len(deadlines._groups), len(deadlines._timers)

    groups, left, timers = asyncio.run(main())
    assert groups > 1 and left == 0 and timers == 0
