"""Iteration-level ("continuous") batching for the recurrent encoder-decoder.

A running set of requests is advanced one decoder step at a time on a dedicated thread.
Newly arrived requests are encoded together and join between steps (gathered for up to
``join_every`` steps, or at once when many are waiting, so that encoder runs are not wasted on
one sentence each); requests whose beams have all finished, or whose deadline passed, or whose
client went away, leave and are answered at once. A request holds ``beam_size`` rows; greedy
is beam 1. Because each request keeps its own fixed-size recurrent state and encoder states,
joining and leaving costs one re-gather of the row arrays, done only when membership changes,
not on every step.

Admission is bounded by a step budget (rows and encoder tokens), so step time and memory stay
predictable; the rest wait in a bounded queue (503 when full).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from service import metrics
from service.batching import BatchPolicy, wait_until_idle
from service.decoding import BeamSearch
from service.errors import DeadlineExceeded, InferenceFailed, NotReady, Overloaded
from service.runners.translation import DecoderRows, Tensor, TranslationJob, TranslationOutput, TranslationRunner

log = logging.getLogger("seqserve.decode")


@dataclass
class _Request:
    job: TranslationJob
    deadline: float
    future: asyncio.Future[TranslationOutput]
    loop: asyncio.AbstractEventLoop
    arrived: float = field(default_factory=time.monotonic)
    search: BeamSearch | None = None
    states: np.ndarray | None = None  # [S_i, E] this request's encoder states (no padding)
    keys: np.ndarray | None = None  # [S_i, A]
    first_step_at: float | None = None

    @property
    def src_len(self) -> int:
        return len(self.job.src_ids)

    def resolve(self, result: TranslationOutput | None = None, error: BaseException | None = None) -> None:
        def _set() -> None:
            if self.future.done():
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)  # type: ignore[arg-type]

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self.loop.call_soon_threadsafe(_set)


class _RowArrays:
    """The running set's rows: members in row order, the encoder side (placed where the decoder
    reads it), and the decoder state with the parent rows the next step takes from it.

    The encoder side is rebuilt (and, under I/O binding, uploaded) only when membership changes;
    between changes each step only passes ``parents`` and the device-resident state along.
    """

    def __init__(self, runner: TranslationRunner) -> None:
        self.runner = runner
        self.members: list[_Request] = []
        self.layout: list[int] = []  # live rows per member, in row order
        self.rows: DecoderRows | None = None
        self.state: Tensor | None = None
        self.parents = np.zeros(0, dtype=np.int64)
        self.dirty = False  # membership changed since the encoder side was built

    def host_state(self) -> np.ndarray | None:
        """The current members' state rows on the host (only on membership changes)."""
        if self.state is None or not self.members:
            return None
        return self.runner.to_host(self.state)[self.parents]

    def rebuild(self, members: list[_Request], host_state: np.ndarray) -> None:
        self.members = list(members)
        self.layout = [m.search.live for m in members]  # type: ignore[union-attr]
        rows = sum(self.layout)
        width = max(m.src_len for m in members)
        first = members[0]
        assert first.states is not None and first.keys is not None
        states = np.zeros((rows, width, first.states.shape[1]), dtype=np.float32)
        keys = np.zeros((rows, width, first.keys.shape[1]), dtype=np.float32)
        mask = np.zeros((rows, width), dtype=np.float32)
        row = 0
        for member, live in zip(members, self.layout, strict=True):
            n = member.src_len
            states[row : row + live, :n] = member.states
            keys[row : row + live, :n] = member.keys
            mask[row : row + live, :n] = 1.0
            row += live
        place = self.runner.place
        self.rows = DecoderRows(place(states), place(keys), place(mask))
        self.state = place(host_state)
        self.parents = np.arange(rows, dtype=np.int64)
        self.dirty = False

    def clear(self) -> None:
        self.members, self.layout, self.rows, self.state, self.dirty = [], [], None, None, False


class DecodeScheduler:
    """Translation engine with iteration-level scheduling (see module docstring).

    ``instances`` lanes each run their own running set on their own thread (so a 2-core machine
    decodes on both cores); a new request goes to the lane with the fewest requests in flight.
    """

    def __init__(self, name: str, runner: TranslationRunner, policy: BatchPolicy, max_rows: int | None = None,
                 join_every: int = 4) -> None:
        self.name = name
        self.runner = runner
        self.policy = policy
        self.accepting = False
        self.in_flight = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        lanes = max(1, policy.instances)
        self.lanes = [_Lane(self, i, max_rows or 4 * policy.max_batch_size, policy.max_batch_tokens, join_every,
                            -(-policy.max_queue_size // lanes)) for i in range(lanes)]

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self.accepting = True
        for lane in self.lanes:
            lane.start()

    async def drain(self, timeout_s: float) -> bool:
        self.accepting = False
        return await wait_until_idle(lambda: self.in_flight, timeout_s)

    async def close(self) -> None:
        self.accepting = False
        self._stop.set()
        for lane in self.lanes:
            if lane.thread is not None:
                await asyncio.to_thread(lane.thread.join, 10.0)
        for lane in self.lanes:
            for request in lane.leftovers():
                request.resolve(error=NotReady("server shut down before this translation finished"))

    def queue_depth(self) -> int:
        return sum(lane.queue_depth() for lane in self.lanes)

    @property
    def _running(self) -> list[_Request]:
        return [r for lane in self.lanes for r in lane.running]

    # --- requests ---------------------------------------------------------------------------
    async def translate(self, job: TranslationJob, deadline: float) -> TranslationOutput:
        if not self.accepting:
            raise NotReady(f"model {self.name} is not accepting requests (starting or shutting down)")
        loop = asyncio.get_running_loop()
        request = _Request(job, deadline, loop.create_future(), loop)
        with self._lock:
            lane = min(self.lanes, key=lambda lane: lane.assigned)
            try:
                lane.intake.put_nowait(request)
            except queue.Full:
                metrics.REJECTED.labels(self.name, "queue_full").inc()
                raise Overloaded(f"model {self.name} queue is full ({self.policy.max_queue_size} waiting); "
                                 "retry later", retry_after_s=1) from None
            self.in_flight += 1
            lane.assigned += 1
        metrics.QUEUE_DEPTH.labels(self.name).set(self.queue_depth())
        # On timeout or client disconnect the awaited future is cancelled; the decode thread
        # sees that and drops the request at its next step.
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0)):
                return await request.future
        except TimeoutError:
            raise DeadlineExceeded(f"deadline passed before model {self.name} finished the translation") from None

    def finish(self, lane: _Lane, request: _Request, result: TranslationOutput | None = None,
               error: BaseException | None = None) -> None:
        with self._lock:
            self.in_flight -= 1
            lane.assigned -= 1
        request.resolve(result, error)


class _Lane:
    """One running set, advanced step by step on its own thread."""

    def __init__(self, scheduler: DecodeScheduler, index: int, max_rows: int, max_encoder_tokens: int,
                 join_every: int, queue_size: int) -> None:
        self.scheduler = scheduler
        self.name = scheduler.name
        self.runner = scheduler.runner
        self.index = index
        self.max_rows = max_rows  # beams across the running set
        self.max_encoder_tokens = max_encoder_tokens
        self.join_every = join_every
        self.intake: queue.Queue[_Request] = queue.Queue(maxsize=queue_size)
        self.assigned = 0  # requests given to this lane and not answered yet
        self.thread: threading.Thread | None = None
        self._stop = scheduler._stop
        self._waiting: list[_Request] = []  # taken from intake, not yet admitted
        self._steps_since_join = 0
        self._running: list[_Request] = []

    @property
    def running(self) -> list[_Request]:
        return self._running

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"seqserve-decode-{self.name}-{self.index}",
                                       daemon=True)
        self.thread.start()

    def queue_depth(self) -> int:
        return self.intake.qsize() + len(self._waiting)

    def leftovers(self) -> list[_Request]:
        out = self._running + self._waiting
        while not self.intake.empty():
            out.append(self.intake.get_nowait())
        return out

    # --- the decode thread ------------------------------------------------------------------
    def _finish(self, request: _Request, result: TranslationOutput | None = None,
                error: BaseException | None = None) -> None:
        self.scheduler.finish(self, request, result, error)

    def _admit(self) -> list[_Request]:
        """Move waiting requests into the running set while the step budget allows."""
        block = not self._running and not self._waiting
        try:
            while True:
                self._waiting.append(self.intake.get(timeout=0.05) if block else self.intake.get_nowait())
                block = False
        except queue.Empty:
            pass
        self._steps_since_join += 1
        if self._running and not self._join_due():
            return []
        rows = sum(r.search.live for r in self._running if r.search is not None)
        tokens = sum(r.src_len * r.job.beam_size for r in self._running)
        admitted: list[_Request] = []
        still_waiting: list[_Request] = []
        now = time.monotonic()
        for request in self._waiting:
            if request.future.done():
                metrics.DROPPED.labels(self.name, "client_gone").inc()
                self._finish(request)
            elif request.deadline <= now:
                metrics.DROPPED.labels(self.name, "deadline").inc()
                self._finish(request, error=DeadlineExceeded(f"deadline passed while queued for model {self.name}"))
            elif not still_waiting and ((not self._running and not admitted) or (
                    rows + request.job.beam_size <= self.max_rows
                    and tokens + request.src_len * request.job.beam_size <= self.max_encoder_tokens)):
                admitted.append(request)
                rows += request.job.beam_size
                tokens += request.src_len * request.job.beam_size
            else:
                still_waiting.append(request)  # FIFO: nobody overtakes a request that does not fit
        self._waiting = still_waiting
        if admitted:
            self._steps_since_join = 0
        metrics.QUEUE_DEPTH.labels(self.name).set(self.scheduler.queue_depth())
        return admitted

    def _join_due(self) -> bool:
        """Whether waiting requests join the running set at this step.

        Every join costs an encoder run and a re-gather of the rows, whatever its size, so
        joiners are gathered for a few steps and encoded together: at once when a quarter of the
        running set is waiting, otherwise every ``join_every`` steps (a few milliseconds of
        waiting against a request that takes tens of steps).
        """
        if not self._waiting:
            return False
        return (len(self._waiting) * 4 >= len(self._running)
                or self._steps_since_join >= self.join_every)

    def _encode(self, joiners: list[_Request]) -> np.ndarray:
        """Encode the joiners together; keep each one's unpadded states. Returns initial states."""
        encoded = self.runner.encode([r.job.src_ids for r in joiners])
        decoding = self.runner.decoding
        for i, request in enumerate(joiners):
            n = request.src_len
            request.states = encoded.states[i, :n].copy()
            request.keys = encoded.keys[i, :n].copy()
            request.search = BeamSearch(request.job.beam_size, request.job.max_length, decoding.length_penalty,
                                        request.job.keep_attention)
        metrics.TOKENS.labels(self.name, "input").inc(sum(r.src_len for r in joiners))
        return encoded.init_state

    def _run(self) -> None:
        rows = _RowArrays(self.runner)
        while not self._stop.is_set():
            try:
                self._loop_once(rows)
            except Exception as exc:  # a fault fails the requests in flight, never the thread
                log.exception("decode step failed on model %s", self.name)
                error = InferenceFailed(f"inference failed on model {self.name}: {type(exc).__name__}: {exc}")
                for request in self._running:
                    self._finish(request, error=error)
                self._running = []
                rows.clear()

    def _loop_once(self, rows: _RowArrays) -> None:
        joiners = self._admit()
        changed = bool(joiners) or rows.dirty
        # requests that went away or ran out of time leave before the step
        now = time.monotonic()
        keep: list[np.ndarray] = []
        survivors = []
        offset = 0
        for request, live in zip(rows.members, rows.layout, strict=True):
            if request.future.done():
                metrics.DROPPED.labels(self.name, "client_gone").inc()
                self._finish(request)
                changed = True
            elif request.deadline <= now:
                metrics.DROPPED.labels(self.name, "deadline").inc()
                self._finish(request, error=DeadlineExceeded(f"deadline passed during decoding on model {self.name}"))
                changed = True
            else:
                survivors.append(request)
                keep.append(np.arange(offset, offset + live))
            offset += live
        if changed:
            parts = []
            host = rows.host_state()
            if host is not None and survivors:
                parts.append(host[np.concatenate(keep)])
            if joiners:
                parts.append(self._encode(joiners))
            if not parts:
                rows.clear()
                self._running = []
                return
            rows.rebuild(survivors + joiners, np.concatenate(parts))
        self._running = list(rows.members)
        if self._running:
            self._step(rows)

    def _step(self, rows: _RowArrays) -> None:
        assert rows.rows is not None and rows.state is not None
        prev = np.fromiter((t for r in rows.members for t in r.search.last_tokens()),  # type: ignore[union-attr]
                           dtype=np.int64)
        want_attention = any(r.job.keep_attention for r in rows.members)
        started = time.monotonic()
        top_lp, top_ids, new_state, attention = self.runner.step(prev, rows.state, rows.parents, rows.rows,
                                                                 want_attention)
        metrics.DECODE_ROWS.labels(self.name).observe(len(prev))
        reorder, survivors, layout = [], [], []
        offset = 0
        finished = False
        for request, live in zip(rows.members, rows.layout, strict=True):
            search = request.search
            assert search is not None
            if request.first_step_at is None:
                request.first_step_at = started
                metrics.TIME_TO_FIRST_STEP.labels(self.name).observe(started - request.arrived)
            window = slice(offset, offset + live)
            attn = attention[window, : request.src_len] if attention is not None and search.keep_attention else None
            parents = search.advance(top_lp[window], top_ids[window], attn)
            if search.done:
                finished = True
                metrics.DECODE_STEPS.labels(self.name).observe(search.steps)
                output = TranslationRunner.to_output(search.best(), request.src_len)
                metrics.TOKENS.labels(self.name, "output").inc(len(output.tokens))
                self._finish(request, output)
            else:
                survivors.append(request)
                layout.append(search.live)
                reorder.append(offset + parents)
            offset += live
        rows.dirty = finished or layout != rows.layout  # the next loop re-gathers the rows, once
        rows.members, rows.layout = survivors, layout
        rows.state = new_state
        rows.parents = np.concatenate(reorder) if reorder else np.zeros(0, dtype=np.int64)
        self._running = survivors
