"""Iteration-level scheduling on a small, really exported translation model."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from export.data import read_multi30k
from service.access_log import CURRENT_REQUEST_ID
from service.batching import BatchPolicy
from service.decode_scheduler import DecodeScheduler, _in_place
from service.decoding import StepUpdate
from service.errors import DeadlineExceeded, InferenceFailed
from service.model_card import load_model_card
from service.runners import TranslationRunner, load_runner
from service.runners.translation import TranslationJob, TranslationOutput
from tests.conftest import DATA_DIR


@pytest.fixture(scope="module")
def runner(tiny_repo: Path) -> TranslationRunner:
    r = load_runner(tiny_repo / "translate-en-de" / "1", ["CPUExecutionProvider"])
    assert isinstance(r, TranslationRunner)
    return r


def _jobs(runner: TranslationRunner, count: int, seed: int) -> list[TranslationJob]:
    rng = random.Random(seed)
    sources = read_multi30k(DATA_DIR, "val", "en")
    return [TranslationJob(runner.tokenize(rng.choice(sources)), rng.choice([1, 1, 2, 4]),
                           rng.choice([3, 8, 20]), keep_attention=rng.random() < 0.3) for _ in range(count)]


async def _scheduled(runner: TranslationRunner, jobs: list[TranslationJob], spread_s: float, seed: int,
                     policy: BatchPolicy | None = None) -> list:  # type: ignore[type-arg]
    scheduler = DecodeScheduler("t", runner, policy or BatchPolicy(16, 4096, 0.001, 10_000))
    scheduler.start()
    rng = random.Random(seed)

    async def one(job: TranslationJob) -> object:
        await asyncio.sleep(rng.random() * spread_s)  # arrive mid-flight, at random steps
        return await scheduler.translate(job, time.monotonic() + 60)

    try:
        return list(await asyncio.gather(*(one(j) for j in jobs)))
    finally:
        assert await scheduler.drain(5)
        assert scheduler.in_flight == 0
        await scheduler.close()


async def test_joining_mid_flight_gives_the_same_output_as_solo_decoding(runner: TranslationRunner) -> None:
    jobs = _jobs(runner, 40, seed=1)
    outputs = await _scheduled(runner, jobs, spread_s=0.2, seed=2)
    for job, out in zip(jobs, outputs, strict=True):
        solo = runner.translate([job])[0]
        assert out.tokens == solo.tokens
        assert out.score == pytest.approx(solo.score, abs=1e-4)
        if job.keep_attention:
            assert out.attention is not None and solo.attention is not None
            assert out.attention.shape == solo.attention.shape == (len(out.tokens), len(job.src_ids))
            assert abs(out.attention - solo.attention).max() < 1e-4
            assert abs(out.attention.sum(axis=1) - 1.0).max() < 1e-5  # whole rows, </s> included


@pytest.fixture(scope="module")
def bound(tiny_repo: Path) -> TranslationRunner:
    """The device path on the CPU: I/O binding, encoder outputs and decoder state kept as OrtValues,
    joins and leaves done by the row-operations graph (service/runners/row_ops.py)."""
    model_dir = tiny_repo / "translate-en-de" / "1"
    r = TranslationRunner(model_dir, load_model_card(model_dir / "model.json"), ["CPUExecutionProvider"],
                          io_binding=True)
    assert r.device_rows is not None
    return r


async def test_device_resident_rows_give_the_same_output(bound: TranslationRunner, runner: TranslationRunner) -> None:
    encoded = bound.encode([runner.tokenize("A dog runs.")])
    assert isinstance(encoded.states, ort.OrtValue) and isinstance(encoded.init_state, ort.OrtValue)
    jobs = _jobs(runner, 40, seed=11)
    outputs = await _scheduled(bound, jobs, spread_s=0.2, seed=12)
    host = await _scheduled(runner, jobs, spread_s=0.2, seed=12)
    for job, out, on_host in zip(jobs, outputs, host, strict=True):
        solo = runner.translate([job])[0]
        assert out.tokens == solo.tokens == on_host.tokens
        assert out.score == pytest.approx(solo.score, abs=1e-4)
        if job.keep_attention:
            assert out.attention is not None and solo.attention is not None
            assert abs(out.attention - solo.attention).max() < 1e-4
    assert [o.tokens for o in bound.translate(jobs[:8])] == [o.tokens for o in runner.translate(jobs[:8])]


async def test_longer_joiners_pad_the_running_rows_on_the_device(bound: TranslationRunner, runner: TranslationRunner,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Short sources start; longer ones (beams and greedy) join mid-flight, so the running rows are
    zero-padded to the joiners' width, and later cut again when the long ones leave first."""
    sources = read_multi30k(DATA_DIR, "val", "en")
    by_length = sorted(sources, key=len)
    short = [TranslationJob(runner.tokenize(s), beam, 200) for s, beam in zip(by_length[:6], [1, 3, 1, 2, 1, 4],
                                                                             strict=True)]
    long = [TranslationJob(runner.tokenize(s), beam, limit) for s, beam, limit in
            zip(by_length[-4:], [2, 1, 5, 1], [2, 3, 4, 40], strict=True)]
    assert max(len(j.src_ids) for j in long) > 2 * max(len(j.src_ids) for j in short)
    widths: list[tuple[int, int]] = []  # (running rows' width, new width) of each join onto survivors
    real_gather = bound.gather_rows

    def gather_rows(rows, state, keep, joiners, width):  # type: ignore[no-untyped-def]
        if rows is not None and joiners is not None:
            widths.append((rows.states.shape()[1], width))
        return real_gather(rows, state, keep, joiners, width)

    monkeypatch.setattr(bound, "gather_rows", gather_rows)
    scheduler = DecodeScheduler("t", bound, BatchPolicy(16, 4096, 0.001, 100), join_every=1)
    scheduler.start()

    async def one(job: TranslationJob, delay: float) -> object:
        await asyncio.sleep(delay)
        return await scheduler.translate(job, time.monotonic() + 60)

    try:
        outputs = await asyncio.gather(*(one(j, 0) for j in short), *(one(j, 0.03 * (i + 1)) for i, j in
                                                                      enumerate(long)))
    finally:
        await scheduler.close()
    assert any(new > old for old, new in widths), widths  # a joiner was longer than the running rows
    for job, out in zip(short + long, outputs, strict=True):
        assert out.tokens == runner.translate([job])[0].tokens  # type: ignore[attr-defined]


def test_a_greedy_leave_moves_one_row_and_beams_keep_their_order() -> None:
    """Single-row survivors stay in their rows; the rows behind the survivors' count fill the
    rows of those that left. Survivors with several rows keep their order."""
    names = ["a", "b", "d", "e", "f", "g", "h"]  # c (row 2) left
    survivors, keep = _in_place(names, np.array([0, 1, 3, 4, 5, 6, 7]))  # type: ignore[arg-type]
    assert survivors == ["a", "b", "h", "d", "e", "f", "g"] and keep.tolist() == [0, 1, 7, 3, 4, 5, 6]
    survivors, keep = _in_place(["a", "b"], np.array([0, 1]))  # type: ignore[arg-type]
    assert survivors == ["a", "b"] and keep.tolist() == [0, 1]
    beams = np.array([0, 0, 4, 5, 5])  # a keeps 2 rows from its row 0, b 3 rows from its rows 4-5
    survivors, keep = _in_place(["a", "b"], beams)  # type: ignore[arg-type]
    assert survivors == ["a", "b"] and keep is beams


async def test_many_mixed_requests_leak_no_state(runner: TranslationRunner) -> None:
    jobs = _jobs(runner, 600, seed=3)
    outputs = await _scheduled(runner, jobs, spread_s=0.5, seed=4, policy=BatchPolicy(16, 2048, 0.001, 10_000))
    sample = random.Random(5).sample(range(len(jobs)), 40)
    for i in sample:
        assert outputs[i].tokens == runner.translate([jobs[i]])[0].tokens


async def test_a_short_request_behind_a_long_one_finishes_first(runner: TranslationRunner) -> None:
    scheduler = DecodeScheduler("t", runner, BatchPolicy(16, 4096, 0.001, 100))
    scheduler.start()
    long_job = TranslationJob(runner.tokenize("A man in a red shirt rides a bike down a long street."), 4, 200)
    short_job = TranslationJob(runner.tokenize("A dog."), 1, 2)
    done: list[str] = []

    async def run(name: str, job: TranslationJob, delay: float) -> None:
        await asyncio.sleep(delay)
        await scheduler.translate(job, time.monotonic() + 60)
        done.append(name)

    await asyncio.gather(run("long", long_job, 0), run("short", short_job, 0.01))
    assert done == ["short", "long"]
    await scheduler.close()


async def test_deadline_inside_decoding_gives_504_and_frees_the_rows(runner: TranslationRunner) -> None:
    scheduler = DecodeScheduler("t", runner, BatchPolicy(16, 4096, 0.001, 100))
    scheduler.start()
    job = TranslationJob(runner.tokenize("A man in a red shirt rides a bike down a long street."), 10, 200)
    with pytest.raises(DeadlineExceeded):
        await scheduler.translate(job, time.monotonic() + 0.02)
    await asyncio.sleep(0.2)
    assert scheduler.in_flight == 0 and not scheduler._running
    ok = await scheduler.translate(TranslationJob(runner.tokenize("A dog."), 1, 5), time.monotonic() + 30)
    assert ok.tokens == runner.translate([TranslationJob(runner.tokenize("A dog."), 1, 5)])[0].tokens
    await scheduler.close()


async def test_an_encoder_fault_fails_the_joining_requests_at_once(runner: TranslationRunner,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    scheduler = DecodeScheduler("t", runner, BatchPolicy(16, 4096, 0.001, 100))
    scheduler.start()
    real_encode = runner.encode
    calls = 0

    def encode_once_broken(ids: list[list[int]]) -> object:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("planted encoder fault")
        return real_encode(ids)

    monkeypatch.setattr(runner, "encode", encode_once_broken)
    job = TranslationJob(runner.tokenize("A dog runs."), 2, 10)
    started = time.monotonic()
    with pytest.raises(InferenceFailed, match="planted encoder fault"):
        await scheduler.translate(job, time.monotonic() + 20)
    assert time.monotonic() - started < 5  # an error at once, not a 504 at the deadline
    ok = await scheduler.translate(job, time.monotonic() + 20)  # the lane keeps serving
    assert ok.tokens == runner.translate([job])[0].tokens
    assert await scheduler.drain(5)
    await scheduler.close()


def _break_the_next_gather(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lane's next row gather raises (a fault outside the model call); later ones work."""
    from service import decode_scheduler

    real_gather = decode_scheduler._RowArrays.gather
    faults = {"left": 1}

    def gather_once_broken(self: object, *args: object) -> None:
        if faults["left"]:
            faults["left"] -= 1
            raise RuntimeError("planted fault in the lane's bookkeeping")
        real_gather(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(decode_scheduler._RowArrays, "gather", gather_once_broken)


async def test_a_lane_thread_that_raises_is_replaced_and_waiting_requests_still_run(
        runner: TranslationRunner, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    scheduler = DecodeScheduler("t", runner, BatchPolicy(16, 4096, 0.001, 100, instances=1))
    scheduler.start()
    first_thread = scheduler.threads[0]
    _break_the_next_gather(monkeypatch)
    job = TranslationJob(runner.tokenize("A dog runs."), 2, 10)
    CURRENT_REQUEST_ID.set("req-2")  # as the middleware sets it for each request's task
    with pytest.raises(InferenceFailed, match="planted fault"):
        await scheduler.translate(job, time.monotonic() + 20)
    assert "answering the 1 sentences it held with 500 (requests req-2)" in caplog.text  # written before the 500
    ok = await scheduler.translate(job, time.monotonic() + 20)
    assert ok.tokens == runner.translate([job])[0].tokens
    assert scheduler.threads[0] is not first_thread and scheduler.healthy
    assert await scheduler.drain(5)
    await scheduler.close()


async def test_new_requests_go_to_the_other_lane_while_a_faulted_one_waits_to_restart(
        runner: TranslationRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    from service import batching

    monkeypatch.setattr(batching, "_BACKOFF_S", (3.0,))  # as after repeated faults
    scheduler = DecodeScheduler("t", runner, BatchPolicy(16, 4096, 0.001, 100, instances=2))
    scheduler.start()
    _break_the_next_gather(monkeypatch)
    job = TranslationJob(runner.tokenize("A dog runs."), 2, 10)
    with pytest.raises(InferenceFailed, match="planted fault"):
        await scheduler.translate(job, time.monotonic() + 20)
    started = time.monotonic()
    ok = await scheduler.translate(job, time.monotonic() + 20)
    assert time.monotonic() - started < 1.5  # not held for the faulted lane's 3 s back-off
    assert ok.tokens == runner.translate([job])[0].tokens
    assert await scheduler.drain(5)
    await scheduler.close()


async def test_a_backlog_is_bounded_by_admission_and_refused_whole(runner: TranslationRunner) -> None:
    from service.errors import Overloaded

    scheduler = DecodeScheduler("t", runner, BatchPolicy(1, 4096, 0.001, 4, instances=1), max_rows=2)
    scheduler.start()
    jobs = [TranslationJob(runner.tokenize("A man in a blue shirt is walking his dog in the park."), 2, 40)
            for _ in range(12)]
    results = await asyncio.gather(*(scheduler.translate_all(jobs[i:i + 3], time.monotonic() + 60)
                                     for i in range(0, 12, 3)), return_exceptions=True)
    refused = [r for r in results if isinstance(r, Overloaded)]
    answered = [r for r in results if isinstance(r, list)]
    assert refused and answered and len(refused) + len(answered) == 4
    assert all(len(r) == 3 for r in answered)  # a request is never answered in part
    assert scheduler.admission.waiting == 0
    assert await scheduler.drain(5)
    await scheduler.close()


async def _stream_updates(runner: TranslationRunner, interval_s: float) -> tuple[list[StepUpdate], TranslationOutput]:
    scheduler = DecodeScheduler("t", runner, BatchPolicy(16, 4096, 0.001, 100), stream_interval_s=interval_s)
    scheduler.start()
    job = TranslationJob(runner.tokenize("A man in a red shirt rides a bike down a long street."), 1, 20,
                         keep_attention=True)
    seen: list[StepUpdate] = []
    job.on_step = seen.append
    try:
        return seen, await scheduler.translate(job, time.monotonic() + 60)
    finally:
        await scheduler.close()


async def test_a_stream_gets_every_step_or_at_most_one_update_per_interval(runner: TranslationRunner) -> None:
    every, output = await _stream_updates(runner, 0.0)
    assert len(every) >= 3 and [len(u.tokens) for u in every] == list(range(1, len(every) + 1))
    assert [u.step for u in every] == list(range(1, len(every) + 1))
    assert all(u.attention is not None and len(u.attention) == len(u.tokens) for u in every)  # rows so far
    assert every[-1].tokens == output.tokens[: len(every)]
    # an interval longer than the whole decoding: the first step only (the result carries the rest)
    first_only, same = await _stream_updates(runner, 60.0)
    assert same.tokens == output.tokens and [(u.step, u.tokens) for u in first_only] == [(1, output.tokens[:1])]


async def test_a_request_of_many_sentences_takes_turns_with_later_ones(runner: TranslationRunner) -> None:
    # batches of 2: at most 4 of the big request's sentences in the lanes at a time
    scheduler = DecodeScheduler("t", runner, BatchPolicy(2, 4096, 0.001, 10_000))
    scheduler.start()
    deadline = time.monotonic() + 60
    big_jobs = [TranslationJob(runner.tokenize("A man is riding a bike."), 1, 20) for _ in range(40)]
    big = asyncio.ensure_future(scheduler.translate_all(big_jobs, deadline))
    await asyncio.sleep(0.02)
    short = await scheduler.translate(TranslationJob(runner.tokenize("A dog."), 1, 20), deadline)
    assert short.tokens and not big.done()  # answered while the big one still decodes, not after it
    assert len(await big) == 40
    # one that ends early leaves nothing counted in flight, its held sentences included
    gone = asyncio.ensure_future(scheduler.translate_all(big_jobs, deadline))
    await asyncio.sleep(0.02)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert await scheduler.drain(5) and scheduler.in_flight == 0
    await scheduler.close()
