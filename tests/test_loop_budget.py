"""service/loop_budget.py: a burst starts its requests a share per event-loop pass, in order."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import pytest

from service import loop_budget
from service.loop_budget import GIVE_WAY_SECONDS, PassBudget


class _Request:
    def __init__(self, i: int, started: list[tuple[int, int]], passes: list[int], gone: bool = False) -> None:
        self.i, self.started, self.passes, self.gone = i, started, passes, gone

    def take_turn(self) -> bool:
        if self.gone:
            return False
        self.started.append((self.i, self.passes[0]))
        return True


async def test_a_burst_starts_a_share_per_loop_pass_first_come_first_served() -> None:
    loop = asyncio.get_running_loop()
    passes = [0]
    started: list[tuple[int, int]] = []  # (request, the loop pass it started in)

    def count_passes() -> None:  # runs once per pass of the loop
        passes[0] += 1
        loop.call_soon(count_passes)

    loop.call_soon(count_passes)
    await asyncio.sleep(0)
    budget = PassBudget(per_pass=4)
    for i in range(30):
        request = _Request(i, started, passes)
        if budget.admit(request):
            request.take_turn()
    while budget.waiting:
        await asyncio.sleep(0)
    assert [i for i, _ in started] == list(range(30))  # first come, first served
    per_pass = Counter(p for _, p in started)
    assert max(per_pass.values()) <= 4 and len(per_pass) >= 30 // 4


async def test_a_request_that_left_while_waiting_gives_its_turn_to_the_next() -> None:
    passes = [0]
    started: list[tuple[int, int]] = []
    budget = PassBudget(per_pass=1)
    assert budget.admit(_Request(0, started, passes))
    assert not budget.admit(_Request(1, started, passes, gone=True))
    assert not budget.admit(_Request(2, started, passes))
    await asyncio.sleep(0)  # one pass: the one that left does not use up its turn
    assert [i for i, _ in started] == [2]


async def test_no_limit_starts_everything_at_once() -> None:
    budget = PassBudget(per_pass=0)
    assert all(budget.admit(_Request(i, [], [0])) for i in range(1000))
    assert budget.waiting == 0


async def test_model_threads_give_way_while_requests_wait_in_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop_budget, "GIVE_WAY_SECONDS", 30.0)  # only the line can end the wait
    budget = PassBudget(per_pass=1)
    assert budget.give_way() == 0.0  # no line: no wait
    assert budget.admit(_Request(0, [], [0]))
    assert not budget.admit(_Request(1, [], [0]))  # in line until the next pass
    waited: list[float] = []
    thread = threading.Thread(target=lambda: waited.append(budget.give_way()))
    thread.start()
    time.sleep(0.1)  # the event loop is busy: the thread waits ...
    assert not waited
    await asyncio.sleep(0)  # ... until a pass of the loop takes the turn and the line is empty
    await asyncio.to_thread(thread.join, 10)
    assert len(waited) == 1 and 0.09 <= waited[0] < 10  # (the thread may start its wait a little late)


async def test_a_model_thread_gives_way_for_a_bounded_time_while_the_line_stays() -> None:
    budget = PassBudget(per_pass=1)
    assert budget.admit(_Request(0, [], [0]))
    assert not budget.admit(_Request(1, [], [0]))
    # the event loop is blocked here, so the line stays: each wait ends at its bound
    started = time.perf_counter()
    # (Event.wait's clock and perf_counter may differ by a hair)
    assert GIVE_WAY_SECONDS - 0.005 <= budget.give_way() < GIVE_WAY_SECONDS + 0.2
    assert GIVE_WAY_SECONDS - 0.005 <= budget.give_way() < GIVE_WAY_SECONDS + 0.2
    assert time.perf_counter() - started < 1.0
