"""Iteration-level ("continuous") batching for the recurrent encoder-decoder.

A running set of requests is advanced one decoder step at a time on a dedicated thread.
Newly arrived requests are encoded together and join between steps (gathered for up to
``join_every`` steps, or at once when many are waiting, so that encoder runs are not wasted on
one sentence each); requests whose beams have all finished, or whose deadline passed, or whose
client went away, leave and are answered at once. A request holds ``beam_size`` rows; greedy
is beam 1. Because each request keeps its own fixed-size recurrent state and encoder states,
joining and leaving costs one gather of the row arrays (the survivors' rows picked, cut or padded
to the new source width, the joiners' freshly encoded rows appended: on the host in the lane's own
memory, where only the rows whose request changes are copied, or on the device by a small ONNX
graph when the rows live there, service/runners/row_ops.py), done only when membership changes,
not on every step; between changes the decoder picks its state rows in-graph (``parent_rows``).

Joining is bounded by a step budget (rows and encoder tokens), so step time and memory stay
predictable; the rest wait, in arrival order. How many may wait is decided on arrival by the
model's admission (service/admission.py, 503 beyond it); a lane looks at no more waiting requests
per step than could join, so a step's bookkeeping stays bounded whatever the backlog. A request
of many sentences gives the lanes at most a batch per lane of them at a time, the next as each is
answered (``AnsweredFromThreads._accept_all``), so that requests arriving after it wait behind
that many, not all of it.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import logging
import queue
import time
from collections.abc import Callable

import numpy as np

from service import metrics
from service.affinity import cpu_of
from service.batching import AnsweredFromThreads, BatchPolicy, Each, Pending, count_cancelled
from service.decoding import BeamSearch, StepUpdate
from service.errors import DeadlineExceeded, NotReady
from service.loop_budget import GiveWay
from service.runners.gil_held import positions
from service.runners.row_ops import HostRowPool, source_width
from service.runners.translation import (
    DecoderRows,
    Encoded,
    Tensor,
    TranslationJob,
    TranslationOutput,
    TranslationRunner,
)

log = logging.getLogger("seqserve.decode")


class _Request(Pending):
    __slots__ = ("arrived", "first_step_at", "job", "next_update_at", "search", "serial")
    _serials = itertools.count()

    def __init__(self, job: TranslationJob, deadline: float, future: asyncio.Future[TranslationOutput]) -> None:
        super().__init__()
        self.job = job
        self.deadline = deadline
        self.future = future
        self.arrived = time.monotonic()
        self.search: BeamSearch | None = None
        self.first_step_at: float | None = None
        self.next_update_at = 0.0  # a streamed request: when its next step update may be handed over
        self.serial = next(self._serials)  # names the rows holding its encoder outputs (HostRowPool)

    @property
    def src_len(self) -> int:
        return len(self.job.src_ids)


Done = tuple[_Request, TranslationOutput | None, BaseException | None]  # a request and its answer
StreamUpdate = tuple[Callable[[StepUpdate], None], StepUpdate]  # a stream's callback and its step


def _deliver(updates: list[StreamUpdate]) -> None:
    """On the event loop: each stream gets its step (a failing stream never stops the others)."""
    for on_step, update in updates:
        try:
            on_step(update)
        except Exception:
            log.exception("a stream's step callback failed")


class _RowArrays:
    """The running set's rows: members in row order, the encoder side and the decoder state
    (numpy, or OrtValues left on the device under I/O binding), and the parent rows the next
    step takes from the state.

    The rows change only when membership or a request's row count changes; they are then
    gathered once (``gather``: on the device through the runner's ``gather_rows`` when the rows
    live there, else in this lane's own host buffers, rebuilt in place). Between changes each step
    only passes ``parents`` and the state along.
    """

    def __init__(self, runner: TranslationRunner) -> None:
        self.runner = runner
        self.pool = HostRowPool() if runner.device_rows is None else None
        self.members: list[_Request] = []
        self.layout: list[int] = []  # live rows per member, in row order
        self.rows: DecoderRows | None = None
        self.state: Tensor | None = None
        self.parents = np.zeros(0, dtype=np.int64)
        self.dirty = False  # membership or row counts changed since the rows were gathered

    def gather(self, survivors: list[_Request], keep: np.ndarray, joiners: list[_Request],
               encoded: Encoded | None) -> None:
        """Rebuild the rows: the survivors' next-step rows (``keep``: their parent rows, which
        index both the last step's state and the current encoder rows, as every row of a request
        holds the same encoder states), then the joiners' first rows, at the longest member's
        source width (rounded up: row_ops.source_width)."""
        width = source_width(max(m.src_len for m in (*survivors, *joiners)))
        if survivors:
            assert self.rows is not None and self.state is not None
        if self.pool is not None:
            survivors, keep = _in_place(survivors, keep)
        members = survivors + joiners
        layout = [m.search.live for m in members]  # type: ignore[union-attr]
        if self.pool is not None:
            owners = np.repeat([m.serial for m in members], layout)
            self.rows, self.state = self.pool.gather(self.state if survivors else None, keep, owners,
                                                     encoded if joiners else None, width)
        else:
            self.rows, self.state = self.runner.gather_rows(
                self.rows if survivors else None, self.state if survivors else None, keep if survivors else None,
                encoded if joiners else None, width)
        self.members, self.layout = members, layout
        self.parents = positions(sum(layout))
        self.dirty = False

    def clear(self) -> None:
        self.members, self.layout, self.rows, self.state, self.dirty = [], [], None, None, False
        if self.pool is not None:
            self.pool.clear()


def _in_place(survivors: list[_Request], keep: np.ndarray) -> tuple[list[_Request], np.ndarray]:
    """The survivors in the row order that moves the fewest rows, and their parent rows in it.

    Where every survivor holds one row (greedy and sampled decoding; beams once one is left), a
    survivor whose row is within the survivors' new rows stays where it is, and the others take
    the rows left by those that went: a leave moves one row, not every row behind it. Otherwise
    (beams, whose row counts change) the order stays, rows behind a leaver moving up."""
    count = len(survivors)
    if len(keep) != count or not count:
        return survivors, keep
    places = keep.tolist()  # a few dozen rows: plain lists cost less than numpy's set operations
    if max(places) < count:
        return survivors, keep
    taken = {p for p in places if p < count}
    free = iter([r for r in range(count) if r not in taken])
    places = [p if p < count else next(free) for p in places]
    order = sorted(range(count), key=places.__getitem__)
    return [survivors[i] for i in order], keep[order]


class DecodeScheduler(AnsweredFromThreads):
    """Translation engine with iteration-level scheduling (see module docstring).

    ``instances`` lanes each run their own running set on their own thread (so a 2-core machine
    decodes on both cores); a new request goes to the lane with the fewest requests in flight.
    """

    def __init__(self, name: str, runner: TranslationRunner, policy: BatchPolicy, max_rows: int | None = None,
                 join_every: int = 4, stream_interval_s: float = 0.0) -> None:
        super().__init__(name, policy.max_queue_size, runner.card.version, unit="sentences")
        self.runner = runner
        self.policy = policy
        self.stream_interval_s = stream_interval_s
        lanes = max(1, policy.instances)
        self.lanes = [_Lane(self, i, max_rows or 4 * policy.max_batch_size, policy.max_batch_tokens, join_every)
                      for i in range(lanes)]

    # --- lifecycle --------------------------------------------------------------------------
    def start(self, give_way: GiveWay | None = None) -> None:
        self._open(give_way)
        for lane in self.lanes:
            self._start_thread(f"decode-{lane.index}", lane.turn, lane.holding, lane.fail_held,
                               cpu=cpu_of(self.policy.thread_cpus, lane.index))

    async def close(self) -> None:
        self.accepting = False
        await self._join_threads()
        for lane in self.lanes:
            self._settle([(request.future, None, NotReady("server shut down before this translation finished"))
                          for request in lane.leftovers()])

    @property
    def _running(self) -> list[_Request]:
        return [r for lane in self.lanes for r in lane.running]

    # --- requests ---------------------------------------------------------------------------
    async def translate_all(self, jobs: list[TranslationJob], deadline: float,
                            each: Each | None = None) -> list[TranslationOutput]:
        """Decode one request's jobs (admitted whole or refused whole); answers in order (and to
        ``each`` as they come in, in order)."""
        requests = [_Request(job, deadline, self._new_future()) for job in jobs]
        with self._accept_all(self._to_a_lane, requests, self.policy.turn):
            return await self._answer_all(requests, deadline, each)

    async def translate(self, job: TranslationJob, deadline: float) -> TranslationOutput:
        """One job alone (a request of one text)."""
        return (await self.translate_all([job], deadline))[0]

    def _to_a_lane(self, request: _Request) -> None:
        # ``assigned`` and ``in_flight`` change on the event loop only (here, and when answers are settled)
        lane = min(self.lanes, key=lambda lane: (lane.recovering, lane.assigned))
        lane.intake.put_nowait(request)
        lane.assigned += 1

    def hand_over(self, lane: _Lane, updates: list[StreamUpdate], done: list[Done]) -> None:
        """From a lane's thread: one step's stream updates, then its finished requests' answers (a
        stream's last update precedes its result), with one wake-up of the event loop."""

        def unassign() -> None:
            lane.assigned -= len(done)

        self._hand_over([(request.future, result, error) for request, result, error in done], unassign,
                        functools.partial(_deliver, updates) if updates else None)


class _Lane:
    """One running set, advanced step by step on its own thread."""

    def __init__(self, scheduler: DecodeScheduler, index: int, max_rows: int, max_encoder_tokens: int,
                 join_every: int) -> None:
        self.scheduler = scheduler
        self.name = scheduler.name
        self.labels = scheduler.labels
        self.runner = scheduler.runner
        self.index = index
        self.max_rows = max_rows  # beams across the running set
        self.max_encoder_tokens = max_encoder_tokens
        self.join_every = join_every
        self.intake: queue.Queue[_Request] = queue.Queue()  # its length is bounded by admission
        self.assigned = 0  # requests given to this lane and not answered yet
        # from a fault until its replacement thread runs (after a back-off of up to 5 s): new
        # requests go to the other lanes meanwhile
        self.recovering = False
        self._waiting: collections.deque[_Request] = collections.deque()  # taken from intake, not yet joined
        self._joining: list[_Request] = []  # admitted, not yet in the rows (a fault must fail them too)
        self._steps_since_join = 0
        self._rows = _RowArrays(self.runner)  # the running set: its members, in row order
        self._answers: list[Done] = []  # finished in this loop turn, handed over together
        self._updates: list[StreamUpdate] = []  # streamed requests' steps in this turn, likewise
        # labelled metric children looked up once (labels() hashes the label tuple on every call)
        self._first_step = metrics.TIME_TO_FIRST_STEP.labels(*self.labels)
        self._rows_per_step = metrics.DECODE_ROWS.labels(*self.labels)
        self._step_run = metrics.BATCH_RUN.labels(*self.labels)  # a step is this engine's batch run
        self._steps_per_request = metrics.DECODE_STEPS.labels(*self.labels)
        self._output_tokens = metrics.TOKENS.labels(*self.labels, "output")

    @property
    def running(self) -> list[_Request]:
        return self._rows.members

    def leftovers(self) -> list[_Request]:
        out = self.running + list(self._waiting)
        while not self.intake.empty():
            out.append(self.intake.get_nowait())
        return out

    # --- the decode thread ------------------------------------------------------------------
    def _finish(self, request: _Request, result: TranslationOutput | None = None,
                error: BaseException | None = None) -> None:
        self._answers.append((request, result, error))  # answered together at the end of the step

    def _flush(self) -> None:
        answers, self._answers = self._answers, []
        updates, self._updates = self._updates, []
        if updates or answers:
            self.scheduler.hand_over(self, updates, answers)

    def _admit(self) -> list[_Request]:
        """Move waiting requests into the running set, in arrival order, while the step budget allows.

        Only the head of the waiting line is looked at: requests taken from the intake are capped
        at what could join at once, and the scan stops at the first that does not fit.
        """
        block = not self.running and not self._waiting
        try:
            while len(self._waiting) < self.max_rows:
                self._waiting.append(self.intake.get(timeout=0.05) if block else self.intake.get_nowait())
                block = False
        except queue.Empty:
            pass
        self._steps_since_join += 1
        if self.running and not self._join_due():
            return []
        rows = sum(self._rows.layout)
        tokens = sum(r.src_len * r.job.beam_size for r in self.running)
        admitted: list[_Request] = []
        now = time.monotonic()
        admission = self.scheduler.admission
        while self._waiting:
            request = self._waiting[0]
            if request.future.done():
                count_cancelled(self.labels, request, now)
                self._finish(request)
            elif request.deadline <= now:
                metrics.DROPPED.labels(*self.labels, "deadline").inc()
                self._finish(request, error=DeadlineExceeded(f"deadline passed while queued for model {self.name}"))
            elif (not self.running and not admitted) or (
                    rows + request.job.beam_size <= self.max_rows
                    and tokens + request.src_len * request.job.beam_size <= self.max_encoder_tokens):
                admitted.append(request)
                rows += request.job.beam_size
                tokens += request.src_len * request.job.beam_size
            else:
                break  # FIFO: nobody overtakes a request that does not fit
            self._waiting.popleft()
            admission.leave(request)
        if admitted:
            self._steps_since_join = 0
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
        return (len(self._waiting) * 4 >= len(self.running)
                or self._steps_since_join >= self.join_every)

    def _encode(self, joiners: list[_Request]) -> Encoded:
        """Encode the joiners together and start their searches."""
        encoded = self.runner.encode([r.job.src_ids for r in joiners])
        for request in joiners:
            request.search = self.runner.search_for(request.job)
        metrics.TOKENS.labels(*self.labels, "input").inc(sum(r.src_len for r in joiners))
        return encoded

    def turn(self) -> bool:
        """One loop of the lane's thread (supervised, see AnsweredFromThreads): True if it stepped."""
        self.recovering = False
        stepped = self._loop_once(self._rows)
        self._flush()
        return stepped

    def holding(self) -> list[_Request]:
        """The requests being decoded or joining, not yet answered (on the lane's own thread)."""
        answered = {id(request) for request, _, _ in self._answers}
        return [request for request in [*self._rows.members, *self._joining] if id(request) not in answered]

    def fail_held(self, exc: BaseException) -> None:
        """After a fault: the requests being decoded or joining fail; those still waiting stay."""
        self.recovering = True
        error = self.scheduler.failure(exc)
        for request in self.holding():
            self._finish(request, error=error)
        self._joining = []
        self._rows.clear()
        self._flush()

    def _loop_once(self, rows: _RowArrays) -> bool:
        joiners = self._joining = self._admit()
        changed = bool(joiners) or rows.dirty
        # requests that went away or ran out of time leave before the step
        now = time.monotonic()
        keep: list[np.ndarray] = []
        survivors = []
        offset = 0
        for request, live in zip(rows.members, rows.layout, strict=True):
            if request.future.done():
                count_cancelled(self.labels, request, now)
                self._finish(request)
                changed = True
            elif request.deadline <= now:
                metrics.DROPPED.labels(*self.labels, "deadline").inc()
                self._finish(request, error=DeadlineExceeded(f"deadline passed during decoding on model {self.name}"))
                changed = True
            else:
                survivors.append(request)
                keep.append(rows.parents[offset : offset + live])
            offset += live
        if changed:
            if not survivors and not joiners:
                rows.clear()
                return False
            encoded = self._encode(joiners) if joiners else None
            kept = np.concatenate(keep) if keep else np.zeros(0, dtype=np.int64)
            rows.gather(survivors, kept, joiners, encoded)
            self._joining = []
        if rows.members:
            self._step(rows)
            return True
        return False

    def _step(self, rows: _RowArrays) -> None:
        assert rows.rows is not None and rows.state is not None
        prev = np.fromiter((t for r in rows.members for t in r.search.last_tokens()),  # type: ignore[union-attr]
                           dtype=np.int64)
        want_attention = any(r.job.keep_attention for r in rows.members)
        started = time.monotonic()
        top_lp, top_ids, new_state, attention = self.runner.step(prev, rows.state, rows.parents, rows.rows,
                                                                 want_attention)
        self._step_run.observe(time.monotonic() - started)
        self._rows_per_step.observe(len(prev))
        # greedy rows read their best candidate as plain numbers (one conversion per step)
        best_lp, best_ids = top_lp[:, 0].tolist(), top_ids[:, 0].tolist()
        reorder: list[int] = []
        survivors, layout = [], []
        offset = 0
        finished = False
        for request, live in zip(rows.members, rows.layout, strict=True):
            search = request.search
            assert search is not None
            if request.first_step_at is None:
                request.first_step_at = started
                self._first_step.observe(started - request.arrived)
            keep_attention = attention is not None and search.keep_attention
            if search.beam_size == 1 and search.sampling is None:
                attn = attention[offset, : request.src_len] if keep_attention else None  # type: ignore[index]
                parents = [offset] if search.advance_token(best_ids[offset], best_lp[offset], attn) else []
            else:
                window = slice(offset, offset + live)
                attn = attention[window, : request.src_len] if keep_attention else None  # type: ignore[index]
                parents = (offset + search.advance(top_lp[window], top_ids[window], attn)).tolist()
            if search.done:
                finished = True
                self._steps_per_request.observe(search.steps)
                output = TranslationRunner.result_of(search, request.job)
                self._output_tokens.inc(len(output.tokens))
                self._finish(request, output)
            else:
                # a stream gets its first step at once, later ones at most every stream_interval_s: each
                # hand-over wakes the stream on the event loop and costs a write, with the GIL held that
                # the lanes need (at 64 streams, every step: 0.69x the non-streamed throughput)
                if request.job.on_step is not None and started >= request.next_update_at:
                    request.next_update_at = started + self.scheduler.stream_interval_s
                    self._updates.append((request.job.on_step, search.update()))
                survivors.append(request)
                layout.append(search.live)
                reorder.extend(parents)
            offset += live
        rows.dirty = finished or layout != rows.layout  # the next loop re-gathers the rows, once
        rows.members, rows.layout = survivors, layout
        rows.state = new_state
        rows.parents = np.array(reorder, dtype=np.int64)
