"""Dynamic batching: a bounded queue per model and ``instances`` worker threads.

A batch forms from the queue until it holds ``max_batch_size`` requests, or its padded size
(requests x longest) would pass ``max_batch_tokens``, or ``max_queue_delay`` has passed since
its first request arrived. It waits for that delay only when company is likely: requests arrive
closer together than the delay and other requests are in flight (a lone client waiting for each
answer is not held). Requests are sorted by length inside the window to cut padding. A request
of more texts than a turn (a window per worker) has at most a turn of them queued or running at a
time (``AnsweredFromThreads._accept_all``), so that it takes turns with the requests after it.

The worker threads form and run the batches themselves, off the event loop: a worker takes the
next window from a thread-safe queue as soon as it is free, runs it, and hands all its answers
back to the event loop in one call. The event loop only accepts requests and delivers answers;
a worker never waits for the event loop between batches (on a small CPU, where the event loop is
busy with HTTP, that wait left the model idle for a third of each batch's time).

With ``helpers_share_windows`` (the CPU) only the first worker forms windows; the others run the
batches it leaves them: of a large window cut in several batches, it runs the first and puts the
rest where they take them. A lone client's requests then stay on one thread, and a backlog runs
on several cores at once. The helpers run at a lower OS priority (``helper_nice``) than the event
loop, whose HTTP work the models' throughput waits on too.

Every accepted request's future is resolved exactly once: a result, or the error of its own
batch, or 504 if its deadline passed, or dropped unseen if its client went away.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from service import metrics
from service.access_log import named_ids
from service.admission import Admission, Waiting
from service.affinity import cpu_of, pin_thread
from service.errors import DeadlineExceeded, InferenceFailed, NotReady, ServiceError
from service.loop_budget import GiveWay
from service.timers import Deadlines

log = logging.getLogger("seqserve.batching")

P = TypeVar("P")
R = TypeVar("R")
T = TypeVar("T")
# called with each answer of a request (its index, the answer) once it and those before it are in
Each = Callable[[int, Any], None]


def count_cancelled(labels: tuple[str, str], item: Pending, now: float) -> None:
    """Count a text whose future was cancelled before its work ran or finished: the event loop's
    504 (``item.expired``) or its deadline passed, else its client left. The 504 says so on the
    item: by the clocks alone it could look early (the loop's timer fires by uvloop's cached,
    millisecond clock, and a thread may have read the time just before), and a text of a request
    that timed out was counted as its client gone."""
    metrics.DROPPED.labels(*labels, "deadline" if item.expired or item.deadline <= now else "client_gone").inc()


class Pending(Waiting):
    """A text accepted and not yet answered: its place in the queue, the future it is answered by,
    and its deadline (time.monotonic() seconds)."""

    __slots__ = ("deadline", "expired", "future")
    future: asyncio.Future[Any]
    deadline: float

    def __init__(self) -> None:
        super().__init__()
        self.expired = False  # cancelled by the event loop's 504 at its deadline (``count_cancelled``)


class WorkItem(Pending, Generic[P, R]):
    __slots__ = ("enqueued_at", "length", "payload", "request")

    def __init__(self, payload: P, length: int, deadline: float, future: asyncio.Future[R],
                 request: object | None = None) -> None:
        super().__init__()
        self.payload = payload
        # the same object for every text of one request (a window counts requests, not texts)
        self.request = object() if request is None else request
        self.length = length  # tokens, for length sorting and the padded-token budget
        self.deadline = deadline  # time.monotonic() seconds
        self.future = future
        self.enqueued_at = time.monotonic()


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
    # how much the OS priority (nice) of the worker threads after the first is below the main
    # thread's (``lower_priority``)
    helper_nice: int = 0
    # the CPUs its threads are pinned to, the i-th thread to the i-th modulo their number; empty:
    # where the scheduler puts them (service/affinity.py)
    thread_cpus: tuple[int, ...] = ()
    # The worker threads after the first run only the batches that the first leaves them from
    # the windows it forms (the CPU: see DynamicBatcher), instead of forming windows of their own
    # (the GPU: a second worker's host work overlaps the first's device run, docs/gpu.md).
    helpers_share_windows: bool = False

    @property
    def turn(self) -> int:
        """The most texts (sentences) of one request queued or running at a time: a batch per worker."""
        return self.max_batch_size * max(1, self.instances)


Answer = tuple["asyncio.Future[Any]", Any, BaseException | None]  # a future, its result or its error
Queued = TypeVar("Queued", bound="Pending")


class _HeldBack(Generic[Queued]):
    """The texts ``AnsweredFromThreads._accept_all`` held back of one request, for the request's
    ``with``: on leaving it they are dropped (``_drop_held``). A class rather than a
    generator-based context manager, which cost the event loop ~1 us more a request (a
    microbenchmark: 1.14 against 0.36 us)."""

    __slots__ = ("_owner", "items")

    def __init__(self, owner: AnsweredFromThreads, items: collections.deque[Queued]) -> None:
        self._owner, self.items = owner, items

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self._owner._drop_held(self.items)

_BACKOFF_S = (0.05, 0.2, 1.0, 5.0)  # before replacing a thread that failed 1, 2, 3, 4+ times in a row


class AnsweredFromThreads:
    """Work accepted on the event loop and answered from worker threads (the batcher's workers,
    the decoder's lanes): admission (service/admission.py), awaiting the answers up to the
    deadline, what is in flight, ``drain``, the hand-over of answers, and the threads' supervision.

    ``in_flight`` changes on the event loop only: +1 when a text is accepted, -1 when its
    answer is settled there. Threads hand answers over with one wake-up of the loop per batch.

    A thread that raises outside the model call (the model call's own errors fail only its batch)
    is logged, the texts it had taken are answered with 500 ``inference_failed``, and a new thread
    takes its place. ``healthy`` (readiness) turns false only when the replacement fails too,
    before it has done any work, and true again once a thread gets work done; ``unhealthy_s``
    says for how long it has been false (liveness: service/registry.py).
    """

    def __init__(self, name: str, max_queue_size: int, version: str = "", unit: str = "texts") -> None:
        self.name = name
        self.labels = (name, version)  # of every per-model metric
        self.admission = Admission(name, max_queue_size, version, unit)
        # held, not looked up on each change: a version no longer served drops its gauges
        # (metrics.forget_version_state), and a thread still draining must not bring this one back
        self._healthy_gauge = metrics.MODEL_HEALTHY.labels(*self.labels)
        self._healthy_gauge.set(1)
        self.accepting = False
        self._unhealthy_since: float | None = None  # time.monotonic() when healthy turned false
        self.in_flight = 0  # accepted, not yet answered
        self._in_flight_gauge = metrics.IN_FLIGHT.labels(*self.labels)
        self._faults_in_a_row = 0
        self._stop = threading.Event()
        self.threads: list[threading.Thread] = []  # supervised: a failed one is replaced in place
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deadlines: Deadlines | None = None  # the requests' deadlines, on the loop
        self._give_way: GiveWay | None = None

    @property
    def healthy(self) -> bool:
        """Readiness: false while the threads' replacements fail before doing any work."""
        return self._unhealthy_since is None

    @property
    def unhealthy_s(self) -> float:
        """Seconds since ``healthy`` turned false (0 while healthy)."""
        since = self._unhealthy_since
        return 0.0 if since is None else time.monotonic() - since

    def _open(self, give_way: GiveWay | None) -> None:
        self._loop = asyncio.get_running_loop()
        self._deadlines = Deadlines(self._loop)
        self._give_way = give_way
        self.accepting = True

    def _new_future(self) -> asyncio.Future[Any]:
        if not self.accepting or self._loop is None:
            raise NotReady(f"model {self.name} is not accepting requests (starting or shutting down)")
        return self._loop.create_future()

    def _accept_all(self, put: Callable[[Queued], None], items: list[Queued], turn: int) -> _HeldBack[Queued]:
        """Admit ``items`` (one request's texts) whole, or refuse them whole with 503, then queue
        them, at most ``turn`` at a time: the next as each is answered, behind whatever arrived
        meanwhile. A request of a thousand sentences held both workers (or the decoder's lanes)
        for all of them, and a short request sent after it waited 0.3-1 s. The caller holds the
        request's ``with`` on what this returns: leaving it, however the request ends, drops what
        is still held back (``_drop_held``)."""
        self.admission.admit(items)
        held: collections.deque[Queued] = collections.deque()
        if len(items) <= turn:
            for item in items:
                put(item)
        else:
            held.extend(items[turn:])

            def next_one(_: asyncio.Future[Any]) -> None:
                if held:  # a future's callback runs on the event loop, where ``put`` must
                    item = held.popleft()
                    put(item)
                    item.future.add_done_callback(next_one)

            for item in items[:turn]:
                put(item)
                item.future.add_done_callback(next_one)
        self.in_flight += len(items)
        self._in_flight_gauge.set(self.in_flight)
        return _HeldBack(self, held)

    def _drop_held(self, held: collections.deque[Queued]) -> None:
        """The texts still held back of a request that ended early (it failed, timed out or its
        client left) never run: counted as dropped, as the threads count those they drop, and
        settled here, as no thread will (a drain would wait for them)."""
        if held:
            now = time.monotonic()
            for item in held:
                count_cancelled(self.labels, item, now)
            self.in_flight -= len(held)
            self._in_flight_gauge.set(self.in_flight)
            held.clear()

    async def _answer_all(self, items: Sequence[Any], deadline: float, each: Each | None = None) -> list[Any]:
        """Every item's answer in order, or 504 at the deadline (``each``: called with each answer's
        index and the answer as soon as it and all before it are in). When one fails, or on
        timeout, or when the caller is cancelled (its client left), the rest are cancelled so that
        the threads drop them; texts still queued give their places back at once."""
        # at the deadline the answers still out are cancelled (``_expire``), which wakes this task:
        # a place in a shared timer (service/timers.py), where asyncio.timeout's context manager
        # cost ~5 us of the loop a request and a timer of its own ~4
        deadlines = self._deadlines
        assert deadlines is not None  # set where accepting starts (``_open``)
        expiry = deadlines.add(deadlines.loop.time() + max(deadline - time.monotonic(), 0), self._expire, items)
        try:
            answers = []
            for index, item in enumerate(items):
                answers.append(await item.future)
                if each is not None:
                    each(index, answers[-1])
            return answers
        except asyncio.CancelledError:
            if items[0].expired and not cast("asyncio.Task[Any]", asyncio.current_task()).cancelling():
                raise DeadlineExceeded(f"deadline passed before model {self.name} answered") from None
            raise  # this task itself was cancelled: its client left
        finally:
            deadlines.discard(expiry)
            for item in items:
                if not item.future.done():
                    item.future.cancel()
                elif not item.future.cancelled():
                    # answered, or failed together with the one raised (a deadline passing in the
                    # decoder fails every text of the request): retrieved, so that asyncio does
                    # not log "Future exception was never retrieved" for each of them
                    item.future.exception()
                if item.waiting:  # still queued: its place is free now (``leave`` decides under its lock)
                    self.admission.leave(item)

    @staticmethod
    def _expire(items: Sequence[Any]) -> None:
        """On the event loop at a request's deadline: its answers still out are cancelled, each
        marked expired first (the threads, finding it cancelled, count why they drop it; the
        request's task answers 504)."""
        for item in items:
            item.expired = True
        for item in items:
            if not item.future.done():
                item.future.cancel()

    async def drain(self, timeout_s: float) -> bool:
        """Stop accepting, let queued and running work finish; True if it all finished in time."""
        self.accepting = False
        end = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < end:
            await asyncio.sleep(0.01)
        return self.in_flight == 0

    def _hand_over(self, answers: list[Answer], then: Callable[[], None] | None = None,
                   before: Callable[[], None] | None = None) -> None:
        """From a worker thread, with one wake-up of the event loop: there, run ``before``, settle
        ``answers``, then run ``then``."""
        if (answers or before is not None) and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
                self._loop.call_soon_threadsafe(self._settle, answers, then, before)

    def _settle(self, answers: list[Answer], then: Callable[[], None] | None = None,
                before: Callable[[], None] | None = None) -> None:
        """On the event loop: resolve each future once; one already done (cancelled because its
        client left or its deadline passed) is left alone."""
        if before is not None:
            before()
        self.in_flight -= len(answers)
        self._in_flight_gauge.set(self.in_flight)
        for future, result, error in answers:
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)
        if then is not None:
            then()

    # --- supervised threads -----------------------------------------------------------------
    def _start_thread(self, name: str, turn: Callable[[], bool], holding: Callable[[], Sequence[Waiting]],
                      on_fault: Callable[[BaseException], None], index: int | None = None, nice: int = 0,
                      cpu: int | None = None) -> None:
        """Start a thread that calls ``turn`` (True when it got work done) until the engine stops;
        if ``turn`` raises, the fault is logged with what the thread had taken (``holding``), then
        ``on_fault`` answers that, and a new thread with the same ``turn`` replaces this one. Where
        no thread can be started (memory or a pids limit: "can't start new thread"), the failed
        one carries on in its place: a model left with no thread took every request and answered
        each with 504 at its deadline, until the process was restarted. ``nice``: its OS priority
        below the event loop's (``lower_priority``); ``cpu``: the one it runs on (None: any)."""

        def serve() -> None:
            worked = False  # whether the last turn did work (a turn starts by waiting for some)
            gave_way = metrics.GAVE_WAY.labels(*self.labels)
            while not self._stop.is_set():
                if self._give_way is not None and worked:  # to requests waiting for the event loop
                    waited = self._give_way()
                    if waited:
                        gave_way.inc(waited)
                worked = turn()
                if worked:
                    self._faults_in_a_row = 0
                    if self._unhealthy_since is not None:
                        self._unhealthy_since = None
                        self._healthy_gauge.set(1)

        slot = len(self.threads) if index is None else index  # its place in ``threads``, for its replacement

        def main() -> None:
            lower_priority(nice)
            pin_thread(cpu)
            while True:
                try:
                    serve()
                    return
                except BaseException as exc:  # anything that ends the thread is answered and logged
                    self._fault(name, exc, holding, on_fault)
                if self._stop.wait(_BACKOFF_S[min(self._faults_in_a_row, len(_BACKOFF_S)) - 1]):
                    return
                try:
                    self._start_thread(name, turn, holding, on_fault, slot, nice, cpu)
                    return
                except RuntimeError as exc:
                    log.error("thread %s of model %s: no new thread could be started (%s); the failed one "
                              "carries on in its place", name, self.name, exc)

        thread = threading.Thread(target=main, name=f"seqserve-{self.name}-{name}", daemon=True)
        # listed before it starts, and the one it replaces listed again if it cannot start (a thread
        # that never started cannot be joined at shutdown)
        if index is None:
            self.threads.append(thread)
        previous, self.threads[slot] = self.threads[slot], thread
        try:
            thread.start()
        except RuntimeError:
            if index is None:
                self.threads.pop()
            else:
                self.threads[slot] = previous
            raise

    def _fault(self, name: str, exc: BaseException, holding: Callable[[], Sequence[Waiting]],
               on_fault: Callable[[BaseException], None]) -> None:
        """Count, log and answer a thread's fault: what it held is failed with 500 by ``on_fault``."""
        self._faults_in_a_row += 1
        if self._faults_in_a_row >= 2 and self._unhealthy_since is None:  # the replacement failed too
            self._unhealthy_since = time.monotonic()
            self._healthy_gauge.set(0)
        held = holding()
        log.error("thread %s of model %s failed (%d in a row); answering the %d %s it held with 500 (requests %s) "
                  "and starting a new one", name, self.name, self._faults_in_a_row, len(held), self.admission.unit,
                  named_ids(t.request_id for t in held), exc_info=exc)
        try:
            on_fault(exc)
        except BaseException:  # e.g. out of memory again: the next turn's answers still come
            log.exception("thread %s of model %s: answering what it held failed", name, self.name)

    async def _join_threads(self) -> None:
        self._stop.set()
        for thread in list(self.threads):
            try:
                await asyncio.to_thread(thread.join, 10.0)
            except RuntimeError:  # no thread to wait in (memory, a pids limit): wait here, briefly
                thread.join(1.0)

    def failure(self, exc: BaseException) -> InferenceFailed:
        return InferenceFailed(f"inference failed on model {self.name}: {type(exc).__name__}: {exc}")


def lower_priority(nice: int) -> None:
    """Set the calling thread's OS priority ``nice`` below the main thread's, the event loop's
    (at most 19; Linux, where a thread's nice is its own).

    A model's first worker thread runs at the event loop's priority; the others soak up the CPU
    that the loop and the first leave. At the same priority, a second sentiment worker served no
    more than one alone: three busy threads on two cores left the event loop waiting in the run
    queue for a third of its time, and the requests with it (docs/benchmarks.md, stop 39)."""
    if nice <= 0 or sys.platform != "linux":  # elsewhere a thread's id is no process id to renice
        return
    try:
        # from the main thread's (the event loop's): a replacement started by a lowered thread
        # inherits its priority
        loop_nice = os.getpriority(os.PRIO_PROCESS, os.getpid())
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(loop_nice + nice, 19))
    except OSError as exc:  # a sandbox that forbids it: the thread runs at the loop's priority
        log.warning("could not lower a worker thread's priority: %s", exc)


def split_by_budget(items: list[WorkItem[P, R]], policy: BatchPolicy) -> list[list[WorkItem[P, R]]]:
    """Cut a window into batches of length-sorted items at the least modelled cost.

    The cost of a batch is ``overhead + size x longest`` (padded tokens); dynamic programming
    over the sorted lengths finds the cheapest split that keeps every batch within
    ``max_batch_size`` and ``max_batch_tokens`` (a single over-long item still runs alone).

    With the lengths sorted, a batch's cost obeys the quadrangle inequality, so the best start
    of the last batch never moves back as the window's end moves on (Knuth's optimisation): each
    end looks only from the previous end's best start: for the windows of ~40 texts that 64
    clients bring, 51-85 against 134-142 us a window (python -m loadtests.turn_cost).
    """
    ordered = sorted(items, key=lambda i: i.length)
    lengths = [i.length for i in ordered]
    n = len(ordered)
    overhead, max_batch, max_tokens = policy.batch_overhead_tokens, policy.max_batch_size, policy.max_batch_tokens
    best = [0.0] * (n + 1)  # the least cost of the first ``end`` items
    cut = [0] * (n + 1)  # where the last batch of that least cost starts
    for end in range(1, n + 1):
        longest = lengths[end - 1]
        first = max(end - min(max_batch, max(max_tokens // max(longest, 1), 1)), cut[end - 1])
        # the last batch items[start:end] costs best[start] + overhead + (end - start) x longest
        least, at = best[first] - first * longest, first
        for start in range(first + 1, end):
            cost = best[start] - start * longest
            if cost < least:
                least, at = cost, start
        best[end], cut[end] = least + overhead + end * longest, at
    batches: list[list[WorkItem[P, R]]] = []
    end = n
    while end > 0:
        batches.append(ordered[cut[end] : end])
        end = cut[end]
    batches.reverse()
    return batches


class DynamicBatcher(AnsweredFromThreads, Generic[P, R]):
    """Per-model queue + worker threads. ``run_batch`` is called on a worker thread with payloads."""

    def __init__(self, name: str, run_batch: Callable[[list[P]], Sequence[R]], policy: BatchPolicy,
                 version: str = "", unit: str = "texts") -> None:
        super().__init__(name, policy.max_queue_size, version, unit)
        self.run_batch = run_batch
        self.policy = policy
        # the per-batch metrics' children, looked up once (a worker's turn after a model run is
        # cold: each ``labels()`` look-up cost a few us there)
        self._queue_wait = metrics.QUEUE_WAIT.labels(*self.labels)
        self._batch_size = metrics.BATCH_SIZE.labels(*self.labels)
        self._padding = metrics.PADDING_RATIO.labels(*self.labels)
        self._input_tokens = metrics.TOKENS.labels(*self.labels, "input")
        self._batch_run = metrics.BATCH_RUN.labels(*self.labels)
        # thread-safe: the event loop puts, the workers take; its length is bounded by admission.
        # SimpleQueue: its put and get are C calls, where Queue's take its lock and Condition in
        # Python on both sides (the loop's put, a worker's get per text)
        self.queue: queue.SimpleQueue[WorkItem[P, R]] = queue.SimpleQueue()
        self.requests_in_flight = 0  # submitted and not yet answered (event loop; workers read it)
        self._last_arrival = 0.0
        self._mean_gap_s = 1.0
        self._held = threading.local()  # per worker: the window it took and has not answered yet
        # with ``helpers_share_windows``: the batches of a window that the first worker left to
        # the others (thread-safe)
        self._spare: queue.SimpleQueue[list[WorkItem[P, R]]] = queue.SimpleQueue()
        self._helpers = policy.helpers_share_windows and policy.instances > 1
        # False from a fault of the first worker until its replacement takes a window: meanwhile
        # the helpers form windows themselves
        self._forming = True

    # --- lifecycle --------------------------------------------------------------------------
    def start(self, give_way: GiveWay | None = None) -> None:
        self._open(give_way)
        # ONNX Runtime sessions are safe to run from several threads: ``instances`` workers run
        # that many batches at once (best with 1 intra-op thread each on a small CPU)
        for i in range(max(1, self.policy.instances)):
            turn, on_fault = ((self._help, self._fail_held) if i else (self._form, self._fail_former)) \
                if self._helpers else (self._turn, self._fail_held)
            self._start_thread(str(i), turn, self._holding, on_fault, nice=self.policy.helper_nice if i else 0,
                               cpu=cpu_of(self.policy.thread_cpus, i))

    async def close(self) -> None:
        self.accepting = False
        await self._join_threads()
        await asyncio.sleep(0)  # answers the workers handed over before stopping are delivered
        # nothing accepted is left without an answer (a thread that outlived its join may still
        # take the last one meanwhile)
        unrun = NotReady("server shut down before this request ran")
        with contextlib.suppress(queue.Empty):
            while True:
                self._settle([(self.queue.get_nowait().future, None, unrun)])
        with contextlib.suppress(queue.Empty):
            while True:
                self._settle([(item.future, None, unrun) for item in self._spare.get_nowait()])

    # --- requests (event loop) --------------------------------------------------------------
    async def submit_all(self, payloads: list[tuple[P, int]], deadline: float, each: Each | None = None) -> list[R]:
        """Run one request's payloads (each with its length in tokens); answers in order (and to
        ``each`` as they come in, in order)."""
        request = object()
        items: list[WorkItem[P, R]] = [WorkItem(payload, length, deadline, self._new_future(), request)
                                       for payload, length in payloads]
        # counted before its texts are queued: a worker that takes them sees this request
        self.requests_in_flight += 1
        try:
            with self._accept_all(self.queue.put_nowait, items, self.policy.turn):
                # moving average of the time between arrivals (decides whether a window waits)
                now = items[0].enqueued_at
                self._mean_gap_s += 0.1 * (min(now - self._last_arrival, 1.0) - self._mean_gap_s)
                self._last_arrival = now
                return await self._answer_all(items, deadline, each)
        finally:
            self.requests_in_flight -= 1

    async def submit(self, payload: P, length: int, deadline: float) -> R:
        """One payload alone (a request of one text)."""
        return (await self.submit_all([(payload, length)], deadline))[0]

    # --- the workers (threads) --------------------------------------------------------------
    def _next_window(self) -> list[WorkItem[P, R]]:
        try:
            first = self.queue.get(timeout=0.05)  # wakes now and then to see whether to stop
        except queue.Empty:
            return []
        window = [first]
        requests = {first.request}  # the requests the window holds texts of
        # Wait for company only when it is likely to come: requests arrive closer together than
        # the delay, and requests other than this window's are in flight (queued, running on
        # another worker, or being answered), whose clients may send again soon. A lone client
        # waiting for each answer arrives as often as it is answered, which looks like company by
        # the gaps alone: its requests waited for nobody (the rest of a request too big for one
        # window is no company either: it is queued already, or on another worker).
        wait = self._mean_gap_s < self.policy.max_queue_delay_s
        close_at = first.enqueued_at + self.policy.max_queue_delay_s
        while len(window) < self.policy.max_batch_size:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                remaining = close_at - time.monotonic()
                if not wait or remaining <= 0 or self.requests_in_flight <= len(requests):
                    break
                try:
                    item = self.queue.get(timeout=remaining)
                except queue.Empty:
                    break
            window.append(item)
            requests.add(item.request)
        self.admission.leave_all(window)
        return window

    def _turn(self) -> bool:
        """One window: formed, split into batches, run, answered. True if there was any. Where
        helpers share the windows, of a window of at least half ``max_batch_size`` texts (this
        worker has fallen behind) the first batch is run here and the others are left to them,
        then run here too if none has taken them yet. Smaller windows stay here: sharing them
        cost the event loop more CPU a request (the helper's turns on its core) than it saved
        (INT8 sentiment, 2 cores, 16 clients: 0.97-0.99x of one worker; docs/benchmarks.md,
        stop 39)."""
        window = self._next_window()
        self._held.items = window  # what a fault outside the model call must still answer
        batches = split_by_budget(window, self.policy) if window else []
        if self._helpers and len(batches) > 1 and len(window) >= self.policy.max_batch_size // 2:
            for spare in batches[:0:-1]:  # the longest first: they take the longest to run
                self._spare.put(spare)
                self._let_go(spare)  # a helper's now
            batches = batches[:1]
        for batch in batches:
            answers = self._run_batch(batch)
            self._let_go(batch)
            self._hand_over(answers)
        with contextlib.suppress(queue.Empty):
            while self._helpers:  # then what the helpers have not taken
                self._run_taken(self._spare.get_nowait())
        return bool(window)

    def _let_go(self, batch: list[WorkItem[P, R]]) -> None:
        """This worker no longer holds ``batch`` (answered, or left to the helpers)."""
        gone = {id(item) for item in batch}
        self._held.items = [item for item in self._held.items if id(item) not in gone]

    def _form(self) -> bool:
        """The first worker's turn where helpers share its windows."""
        self._forming = True
        return self._turn()

    def _help(self) -> bool:
        """A helper's turn: one batch that the first worker left, run and answered; a window of
        its own while the first worker is being replaced after a fault."""
        if not self._forming:
            return self._turn()
        try:
            batch = self._spare.get(timeout=0.05)
        except queue.Empty:
            return False
        self._run_taken(batch)
        return True

    def _run_taken(self, batch: list[WorkItem[P, R]]) -> None:
        """Run and answer a batch taken from the ones the first worker left."""
        self._held.items = batch
        answers = self._run_batch(batch)
        self._held.items = []
        self._hand_over(answers)

    def _holding(self) -> list[WorkItem[P, R]]:
        """What this worker took and has not answered yet (on the worker's own thread)."""
        return list(getattr(self._held, "items", []))

    def _fail_former(self, exc: BaseException) -> None:
        """The first worker's fault, where helpers share its windows: they form windows until its
        replacement does."""
        self._forming = False
        self._fail_held(exc)

    def _fail_held(self, exc: BaseException) -> None:
        held = self._holding()
        self._held.items = []
        error = self.failure(exc)
        self._hand_over([(item.future, None, error) for item in held])

    def _run_batch(self, batch: list[WorkItem[P, R]]) -> list[Answer]:
        """Run one batch; the answers for every item in it (dropped ones included)."""
        answers: list[Answer] = []
        live: list[WorkItem[P, R]] = []
        started = time.monotonic()
        queue_wait = self._queue_wait
        for item in batch:  # drop, before any compute, requests nobody waits for or that are too late
            if item.future.done():
                count_cancelled(self.labels, item, started)
                answers.append((item.future, None, None))
            elif item.deadline <= started:
                metrics.DROPPED.labels(*self.labels, "deadline").inc()
                late = DeadlineExceeded(f"deadline passed while queued for model {self.name}")
                answers.append((item.future, None, late))
            else:
                live.append(item)
                queue_wait.observe(started - item.enqueued_at)
        if not live:
            return answers
        longest = live[-1].length
        total = sum(i.length for i in live)
        self._batch_size.observe(len(live))
        self._padding.observe(1.0 - total / max(longest * len(live), 1))
        self._input_tokens.inc(total)
        try:
            results = self.run_batch([i.payload for i in live])
            if len(results) != len(live):
                raise RuntimeError(f"runner returned {len(results)} results for {len(live)} requests")
        except ServiceError as exc:
            answers.extend((item.future, None, exc) for item in live)
        except Exception as exc:  # a fault in the model run fails only this batch
            log.exception("batch of %d %s failed on model %s (requests %s)", len(live), self.admission.unit, self.name,
                          named_ids(item.request_id for item in live))
            error = self.failure(exc)
            answers.extend((item.future, None, error) for item in live)
        else:
            answers.extend((item.future, result, None) for item, result in zip(live, results, strict=True))
        self._batch_run.observe(time.monotonic() - started)
        return answers
