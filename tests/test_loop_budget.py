"""service/loop_budget.py: a burst starts its requests a share per event-loop pass, in order."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from service.loop_budget import LoopBudgetMiddleware


async def test_a_burst_starts_a_share_per_loop_pass_first_come_first_served() -> None:
    loop = asyncio.get_running_loop()
    passes = [0]
    started: list[tuple[int, int]] = []  # (request, the loop pass it started in)

    def count_passes() -> None:  # runs once per pass of the loop
        passes[0] += 1
        loop.call_soon(count_passes)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        started.append((scope["i"], passes[0]))

    gate = LoopBudgetMiddleware(app, per_pass=4)
    loop.call_soon(count_passes)
    await asyncio.gather(*(gate({"type": "http", "i": i}, None, None) for i in range(30)))
    assert [i for i, _ in started] == list(range(30))  # first come, first served
    per_pass = Counter(p for _, p in started)
    assert max(per_pass.values()) <= 4 and len(per_pass) >= 30 // 4


async def test_a_request_that_leaves_while_waiting_gives_its_turn_to_the_next() -> None:
    started: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        started.append(scope["i"])

    gate = LoopBudgetMiddleware(app, per_pass=1)
    tasks = [asyncio.ensure_future(gate({"type": "http", "i": i}, None, None)) for i in range(4)]
    await asyncio.sleep(0)  # all four reach the gate: the first starts, three wait
    tasks[1].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert started == [0, 2, 3]


async def test_a_request_stops_counting_as_arriving_when_it_starts_or_leaves() -> None:
    from service.admission import Admission
    from service.early_refusal import RESERVED

    admission = Admission("m", limit=8)
    seen: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(admission.arriving)

    def arriving(i: int) -> dict[str, Any]:
        admission.arriving += 1
        return {"type": "http", "i": i, "extensions": {RESERVED: admission}}

    await LoopBudgetMiddleware(app, per_pass=0)(arriving(0), None, None)  # no limit: it starts at once
    assert seen == [0]
    gate = LoopBudgetMiddleware(app, per_pass=1)
    tasks = [asyncio.ensure_future(gate(arriving(i), None, None)) for i in range(3)]
    await asyncio.sleep(0)
    tasks[1].cancel()  # left while waiting for its turn
    await asyncio.gather(*tasks, return_exceptions=True)
    assert admission.arriving == 0
