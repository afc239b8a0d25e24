"""Dynamic batching: a bounded queue per model and ``instances`` worker threads.

A batch forms from the queue until it holds ``max_batch_size`` requests, or its padded size
(requests x longest) would pass ``max_batch_tokens``, or ``max_queue_delay`` has passed since
its first request arrived. Requests are sorted by length inside the window to cut padding.

The worker threads form and run the batches themselves, off the event loop: a worker takes the
next window from a thread-safe queue as soon as it is free, runs it, and hands all its answers
back to the event loop in one call. The event loop only accepts requests and delivers answers;
a worker never waits for the event loop between batches (on a small CPU, where the event loop is
busy with HTTP, that wait left the model idle for a third of each batch's time).

Every accepted request's future is resolved exactly once: a result, or the error of its own
batch, or 504 if its deadline passed, or dropped unseen if its client went away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from service import metrics
from service.errors import DeadlineExceeded, InferenceFailed, NotReady, Overloaded, ServiceError

log = logging.getLogger("seqserve.batching")

P = TypeVar("P")
R = TypeVar("R")
T = TypeVar("T")


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


Answer = tuple["asyncio.Future[Any]", Any, BaseException | None]  # a future, its result or its error


class AnsweredFromThreads:
    """Work accepted on the event loop and answered from worker threads (the batcher's workers,
    the decoder's lanes): accepting a request into a bounded queue, awaiting its answer up to its
    deadline, what is in flight, ``drain``, and the hand-over of answers.

    ``in_flight`` changes on the event loop only: +1 when a request is accepted, -1 when its
    answer is settled there. Threads hand answers over with one wake-up of the loop per batch.
    """

    def __init__(self, name: str, max_queue_size: int) -> None:
        self.name = name
        self.max_queue_size = max_queue_size
        self.accepting = False
        self.in_flight = 0  # accepted, not yet answered
        self._loop: asyncio.AbstractEventLoop | None = None

    def _open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.accepting = True

    def _new_future(self) -> asyncio.Future[Any]:
        if not self.accepting or self._loop is None:
            raise NotReady(f"model {self.name} is not accepting requests (starting or shutting down)")
        return self._loop.create_future()

    def _accept(self, put: Callable[[T], None], item: T) -> None:
        """Queue ``item`` with ``put`` (a bounded queue's put_nowait): 503 at once when it is full."""
        try:
            put(item)
        except queue.Full:
            metrics.REJECTED.labels(self.name, "queue_full").inc()
            raise Overloaded(f"model {self.name} queue is full ({self.max_queue_size} waiting); retry later",
                             retry_after_s=1) from None
        self.in_flight += 1

    async def _answer(self, future: asyncio.Future[Any], deadline: float) -> Any:
        """The answer, or 504 at the deadline. On timeout or client disconnect the awaited future
        is cancelled; the worker or lane sees that and drops the request."""
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0)):
                return await future
        except TimeoutError:
            raise DeadlineExceeded(f"deadline passed before model {self.name} answered") from None

    async def drain(self, timeout_s: float) -> bool:
        """Stop accepting, let queued and running work finish; True if it all finished in time."""
        self.accepting = False
        end = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < end:
            await asyncio.sleep(0.01)
        return self.in_flight == 0

    def _hand_over(self, answers: list[Answer], then: Callable[[], None] | None = None) -> None:
        """From a worker thread: settle ``answers`` on the event loop, then run ``then`` there."""
        if answers and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
                self._loop.call_soon_threadsafe(self._settle, answers, then)

    def _settle(self, answers: list[Answer], then: Callable[[], None] | None = None) -> None:
        """On the event loop: resolve each future once; one already done (cancelled because its
        client left or its deadline passed) is left alone."""
        for future, result, error in answers:
            self.in_flight -= 1
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)
        if then is not None:
            then()


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


class DynamicBatcher(AnsweredFromThreads, Generic[P, R]):
    """Per-model queue + worker threads. ``run_batch`` is called on a worker thread with payloads."""

    def __init__(self, name: str, run_batch: Callable[[list[P]], Sequence[R]], policy: BatchPolicy) -> None:
        super().__init__(name, policy.max_queue_size)
        self.run_batch = run_batch
        self.policy = policy
        # thread-safe: the event loop puts, the workers take
        self.queue: queue.Queue[WorkItem[P, R]] = queue.Queue(maxsize=policy.max_queue_size)
        self._last_arrival = 0.0
        self._mean_gap_s = 1.0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self._open()
        # ONNX Runtime sessions are safe to run from several threads: ``instances`` workers run
        # that many batches at once (best with 1 intra-op thread each on a small CPU)
        for i in range(max(1, self.policy.instances)):
            thread = threading.Thread(target=self._work, name=f"seqserve-{self.name}-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    async def close(self) -> None:
        self.accepting = False
        self._stop.set()
        for thread in self._threads:
            await asyncio.to_thread(thread.join, 10.0)
        await asyncio.sleep(0)  # answers the workers handed over before stopping are delivered
        while not self.queue.empty():  # nothing accepted is left without an answer
            item = self.queue.get_nowait()
            self._settle([(item.future, None, NotReady("server shut down before this request ran"))])

    # --- requests (event loop) --------------------------------------------------------------
    async def submit(self, payload: P, length: int, deadline: float) -> R:
        item: WorkItem[P, R] = WorkItem(payload, length, deadline, self._new_future())
        self._accept(self.queue.put_nowait, item)
        # moving average of the time between arrivals (decides whether a window waits)
        self._mean_gap_s += 0.1 * (min(item.enqueued_at - self._last_arrival, 1.0) - self._mean_gap_s)
        self._last_arrival = item.enqueued_at
        result: R = await self._answer(item.future, deadline)
        return result

    # --- the workers (threads) --------------------------------------------------------------
    def _next_window(self) -> list[WorkItem[P, R]]:
        try:
            first = self.queue.get(timeout=0.05)  # wakes now and then to see whether to stop
        except queue.Empty:
            return []
        window = [first]
        # Wait for company only when it is likely to come: if requests arrive further apart than
        # the delay (e.g. a single client waiting for each answer), waiting only adds latency.
        delay = self.policy.max_queue_delay_s if self._mean_gap_s < self.policy.max_queue_delay_s else 0.0
        close_at = first.enqueued_at + delay
        while len(window) < self.policy.max_batch_size:
            try:
                window.append(self.queue.get_nowait())
                continue
            except queue.Empty:
                pass
            remaining = close_at - time.monotonic()
            if remaining <= 0:
                break
            try:
                window.append(self.queue.get(timeout=remaining))
            except queue.Empty:
                break
        metrics.QUEUE_DEPTH.labels(self.name).set(self.queue.qsize())
        return window

    def _work(self) -> None:
        while not self._stop.is_set():
            window = self._next_window()
            for batch in split_by_budget(window, self.policy) if window else []:
                self._hand_over(self._run_batch(batch))

    def _run_batch(self, batch: list[WorkItem[P, R]]) -> list[Answer]:
        """Run one batch; the answers for every item in it (dropped ones included)."""
        answers: list[Answer] = []
        live: list[WorkItem[P, R]] = []
        started = time.monotonic()
        queue_wait = metrics.QUEUE_WAIT.labels(self.name)
        for item in batch:  # drop, before any compute, requests nobody waits for or that are too late
            if item.future.done():
                metrics.DROPPED.labels(self.name, "client_gone").inc()
                answers.append((item.future, None, None))
            elif item.deadline <= started:
                metrics.DROPPED.labels(self.name, "deadline").inc()
                late = DeadlineExceeded(f"deadline passed while queued for model {self.name}")
                answers.append((item.future, None, late))
            else:
                live.append(item)
                queue_wait.observe(started - item.enqueued_at)
        if not live:
            return answers
        longest = live[-1].length
        total = sum(i.length for i in live)
        metrics.BATCH_SIZE.labels(self.name).observe(len(live))
        metrics.PADDING_RATIO.labels(self.name).observe(1.0 - total / max(longest * len(live), 1))
        metrics.TOKENS.labels(self.name, "input").inc(total)
        try:
            results = self.run_batch([i.payload for i in live])
            if len(results) != len(live):
                raise RuntimeError(f"runner returned {len(results)} results for {len(live)} requests")
        except ServiceError as exc:
            answers.extend((item.future, None, exc) for item in live)
        except Exception as exc:  # a fault in the model run fails only this batch
            log.exception("batch of %d failed on model %s", len(live), self.name)
            error = InferenceFailed(f"inference failed on model {self.name}: {type(exc).__name__}: {exc}")
            answers.extend((item.future, None, error) for item in live)
        else:
            answers.extend((item.future, result, None) for item, result in zip(live, results, strict=True))
        metrics.BATCH_RUN.labels(self.name).observe(time.monotonic() - started)
        return answers
