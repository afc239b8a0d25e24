"""Closed-loop load from one process, or from several on a machine with cores to spare.

One asyncio client process tops out at a few thousand requests a second; on a many-core host
with several server workers that, not the server, would set the measured throughput. Spread
over processes, each runs its share of the clients over the same interval (lined up on one
clock) and the parts are added up. On a small machine one process is better: the load
generator shares the cores it measures.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from loadtests.http_client import LoadResult, closed_loop

_LINE_UP_S = 0.3  # time for every process to receive its share before the interval starts


def _run(coro: Any) -> LoadResult:
    try:
        import uvloop

        result: LoadResult = uvloop.run(coro)
    except ImportError:
        result = asyncio.run(coro)
    return result


def run_clients(port: int, requests: list[bytes], clients: int, duration: float, *, keyed: bool = False,
                offset: int = 0, stride: int = 1, start_at: float | None = None,
                warmup_s: float = 1.0, host: str = "127.0.0.1") -> tuple[LoadResult, dict[int, bytes]]:
    """``clients`` closed-loop clients sending ``requests[offset], requests[offset + stride], ...``
    (round robin). With ``keyed``, latencies are tagged with the request's index and 2xx bodies
    come back by index. A plain function, so that a process pool can run it."""
    n = len(requests)
    record: dict[int, bytes] | None = {} if keyed else None
    result = _run(closed_loop(host, port, lambda i: (requests[(offset + i * stride) % n], 1), clients,
                              duration, warmup_s=warmup_s, record=record,
                              record_key=(lambda i: (offset + i * stride) % n) if keyed else None, start_at=start_at))
    return result, record or {}


def default_processes() -> int:
    cores = os.cpu_count() or 1
    return 1 if cores <= 4 else min(4, cores // 4)


class LoadGenerator:
    def __init__(self, processes: int = 1, warmup_s: float = 1.0) -> None:
        self.processes = processes
        self.warmup_s = warmup_s  # unmeasured time before each run's interval
        self.pool = (ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))
                     if processes > 1 else None)

    def run(self, port: int, requests: list[bytes], clients: int, duration: float,
            keyed: bool = False) -> tuple[LoadResult, dict[int, bytes]]:
        parts = min(self.processes, clients)
        if self.pool is None or parts == 1:
            return run_clients(port, requests, clients, duration, keyed=keyed, warmup_s=self.warmup_s)
        start_at = time.perf_counter() + _LINE_UP_S
        futures = [self.pool.submit(run_clients, port, requests, clients // parts + (j < clients % parts), duration,
                                    keyed=keyed, offset=j, stride=parts, start_at=start_at, warmup_s=self.warmup_s)
                   for j in range(parts)]
        results = [f.result() for f in futures]
        record: dict[int, bytes] = {}
        for _, part in results:
            record.update(part)
        return LoadResult.side_by_side([r for r, _ in results]), record

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    def __enter__(self) -> LoadGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
