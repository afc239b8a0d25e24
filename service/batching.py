"""Dynamic batching: a bounded queue per model, a batcher task, and one worker thread.

A batch forms from the queue until it holds ``max_batch_size`` requests, or its padded size
(requests x longest) would pass ``max_batch_tokens``, or ``max_queue_delay`` has passed since
its first request arrived. Requests are sorted by length inside the window to cut padding.
The batch runs off the event loop on a worker thread; ``instances`` workers (default 1) run
that many batches at once, one batch at a time per worker. Every accepted request's future is
resolved exactly once: a result, or the error of its own batch, or 504 if its deadline passed,
or dropped unseen if its client went away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from service import metrics
from service.errors import DeadlineExceeded, InferenceFailed, NotReady, Overloaded, ServiceError

log = logging.getLogger("seqserve.batching")

P = TypeVar("P")
R = TypeVar("R")


@dataclass
class WorkItem(Generic[P, R]):
    payload: P
    length: int  # tokens, for length sorting and the padded-token budget
    deadline: float  # time.monotonic() seconds
    future: asyncio.Future[R]
    enqueued_at: float = field(default_factory=time.monotonic)


@dataclass
class BatchPolicy:
    max_batch_size: int
    max_batch_tokens: int
    max_queue_delay_s: float
    max_queue_size: int
    # Fixed cost of one model run, in padded-token equivalents (measured at warm-up). It decides
    # when splitting a window into shorter, less padded batches pays for the extra runs.
    batch_overhead_tokens: float = 64.0
    instances: int = 1  # batches run at once (worker threads)


async def wait_until_idle(in_flight: Callable[[], int], timeout_s: float) -> bool:
    """Poll until nothing is in flight or the timeout passes; True if idle."""
    end = time.monotonic() + timeout_s
    while in_flight() and time.monotonic() < end:
        await asyncio.sleep(0.01)
    return in_flight() == 0


def split_by_budget(items: list[WorkItem[P, R]], policy: BatchPolicy) -> list[list[WorkItem[P, R]]]:
    """Cut a window into batches of length-sorted items at the least modelled cost.

    The cost of a batch is ``overhead + size x longest`` (padded tokens); dynamic programming
    over the sorted lengths finds the cheapest split that keeps every batch within
    ``max_batch_size`` and ``max_batch_tokens`` (a single over-long item still runs alone).
    """
    ordered = sorted(items, key=lambda i: i.length)
    lengths = [i.length for i in ordered]
    n = len(ordered)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        longest = lengths[end - 1]
        max_size = min(policy.max_batch_size, max(policy.max_batch_tokens // max(longest, 1), 1))
        for start in range(max(0, end - max_size), end):
            cost = best[start] + policy.batch_overhead_tokens + (end - start) * longest
            if cost < best[end]:
                best[end], cut[end] = cost, start
    batches: list[list[WorkItem[P, R]]] = []
    end = n
    while end > 0:
        batches.append(ordered[cut[end] : end])
        end = cut[end]
    batches.reverse()
    return batches


class DynamicBatcher(Generic[P, R]):
    """Per-model queue + batcher. ``run_batch`` is called on the worker thread with payloads."""

    def __init__(self, name: str, run_batch: Callable[[list[P]], Sequence[R]], policy: BatchPolicy) -> None:
        self.name = name
        self.run_batch = run_batch
        self.policy = policy
        self.queue: asyncio.Queue[WorkItem[P, R]] = asyncio.Queue(maxsize=policy.max_queue_size)
        # ONNX Runtime sessions are safe to run from several threads: ``instances`` workers run
        # that many batches at once (best with 1 intra-op thread each on a small CPU)
        self.executor = ThreadPoolExecutor(max_workers=policy.instances, thread_name_prefix=f"seqserve-{name}")
        self._workers = asyncio.Semaphore(policy.instances)
        self._last_arrival = 0.0
        self._mean_gap_s = 1.0
        self.accepting = False
        self.in_flight = 0  # accepted, not yet answered
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self.accepting = True
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    async def drain(self, timeout_s: float) -> bool:
        """Stop accepting, let queued and running work finish; True if it all finished in time."""
        self.accepting = False
        return await wait_until_idle(lambda: self.in_flight, timeout_s)

    async def close(self) -> None:
        self.accepting = False
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self.queue.empty():  # nothing accepted is left without an answer
            item = self.queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(NotReady("server shut down before this request ran"))
        self.executor.shutdown(wait=True)

    # --- requests ---------------------------------------------------------------------------
    async def submit(self, payload: P, length: int, deadline: float) -> R:
        if not self.accepting:
            raise NotReady(f"model {self.name} is not accepting requests (starting or shutting down)")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        item = WorkItem(payload, length, deadline, future)
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            metrics.REJECTED.labels(self.name, "queue_full").inc()
            raise Overloaded(f"model {self.name} queue is full ({self.policy.max_queue_size} waiting); retry later",
                             retry_after_s=1) from None
        self.in_flight += 1
        # moving average of the time between arrivals (decides whether a window waits)
        self._mean_gap_s += 0.1 * (min(item.enqueued_at - self._last_arrival, 1.0) - self._mean_gap_s)
        self._last_arrival = item.enqueued_at
        metrics.QUEUE_DEPTH.labels(self.name).set(self.queue.qsize())
        # On timeout or client disconnect the awaited future is cancelled, so the batcher skips it.
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0)):
                return await future
        except TimeoutError:
            raise DeadlineExceeded(f"deadline passed before model {self.name} answered") from None

    # --- the batcher ------------------------------------------------------------------------
    async def _next_window(self) -> list[WorkItem[P, R]]:
        first = await self.queue.get()
        window = [first]
        # Wait for company only when it is likely to come: if requests arrive further apart than
        # the delay (e.g. a single client waiting for each answer), waiting only adds latency.
        delay = self.policy.max_queue_delay_s if self._mean_gap_s < self.policy.max_queue_delay_s else 0.0
        close_at = first.enqueued_at + delay
        limit = self.policy.max_batch_size
        while len(window) < limit:
            if not self.queue.empty():
                window.append(self.queue.get_nowait())
                continue
            remaining = close_at - time.monotonic()
            if remaining <= 0:
                break
            try:
                window.append(await asyncio.wait_for(self.queue.get(), timeout=remaining))
            except TimeoutError:
                break
        metrics.QUEUE_DEPTH.labels(self.name).set(self.queue.qsize())
        return window

    def _resolve(self, item: WorkItem[P, R], result: R | None = None, error: BaseException | None = None) -> None:
        self.in_flight -= 1
        if item.future.done():
            return
        if error is not None:
            item.future.set_exception(error)
        else:
            item.future.set_result(result)  # type: ignore[arg-type]

    def _live(self, window: list[WorkItem[P, R]]) -> list[WorkItem[P, R]]:
        """Drop requests whose client went away or whose deadline passed, before any compute."""
        now = time.monotonic()
        live = []
        for item in window:
            if item.future.done():
                metrics.DROPPED.labels(self.name, "client_gone").inc()
                self._resolve(item)
            elif item.deadline <= now:
                metrics.DROPPED.labels(self.name, "deadline").inc()
                self._resolve(item, error=DeadlineExceeded(f"deadline passed while queued for model {self.name}"))
            else:
                live.append(item)
        return live

    async def _loop(self) -> None:
        windows: set[asyncio.Task[None]] = set()
        while True:
            # take a worker first, then form the window: a window never waits for a worker while
            # requests keep arriving that it could have taken
            await self._workers.acquire()
            window = await self._next_window()
            task = asyncio.get_running_loop().create_task(self._run_window(window))
            windows.add(task)
            task.add_done_callback(windows.discard)

    async def _run_window(self, window: list[WorkItem[P, R]]) -> None:
        try:
            for batch in split_by_budget(window, self.policy):
                await self._run_batch(batch)
        finally:
            self._workers.release()

    async def _run_batch(self, batch: list[WorkItem[P, R]]) -> None:
        batch = self._live(batch)
        if not batch:
            return
        started = time.monotonic()
        for item in batch:
            metrics.QUEUE_WAIT.labels(self.name).observe(started - item.enqueued_at)
        longest = batch[-1].length
        total = sum(i.length for i in batch)
        metrics.BATCH_SIZE.labels(self.name).observe(len(batch))
        metrics.PADDING_RATIO.labels(self.name).observe(1.0 - total / max(longest * len(batch), 1))
        metrics.TOKENS.labels(self.name, "input").inc(total)
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self.executor, self.run_batch, [i.payload for i in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"runner returned {len(results)} results for {len(batch)} requests")
        except ServiceError as exc:
            for item in batch:
                self._resolve(item, error=exc)
        except Exception as exc:  # a fault in the model run fails only this batch
            log.exception("batch of %d failed on model %s", len(batch), self.name)
            error = InferenceFailed(f"inference failed on model {self.name}: {type(exc).__name__}: {exc}")
            for item in batch:
                self._resolve(item, error=error)
        else:
            for item, result in zip(batch, results, strict=True):
                self._resolve(item, result)
        metrics.BATCH_RUN.labels(self.name).observe(time.monotonic() - started)
