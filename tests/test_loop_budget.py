"""service/loop_budget.py: a burst starts its requests a share per event-loop pass, in order."""

from __future__ import annotations

import asyncio
from collections import Counter

from service.loop_budget import PassBudget


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
