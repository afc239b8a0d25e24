"""The dynamic batcher with a fake runner (the test is about batching, not the model)."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import Callable

import pytest
from prometheus_client import REGISTRY

from service.batching import BatchPolicy, DynamicBatcher, WorkItem, count_cancelled, split_by_budget
from service.errors import DeadlineExceeded, InferenceFailed, NotReady, Overloaded


def _policy(**kw: float) -> BatchPolicy:
    base = {"max_batch_size": 8, "max_batch_tokens": 1000, "max_queue_delay_s": 0.01, "max_queue_size": 100}
    return BatchPolicy(**{**base, **kw})  # type: ignore[arg-type]


class Recorder:
    def __init__(self, delay: float = 0.0, fail_on: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.delay = delay
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def __call__(self, payloads: list[str]) -> list[str]:
        with self.lock:
            self.batches.append(list(payloads))
        time.sleep(self.delay)
        if self.fail_on in payloads:
            raise RuntimeError("boom")
        return [p.upper() for p in payloads]


def test_split_sorts_by_length_and_respects_budgets() -> None:
    loop = asyncio.new_event_loop()
    items = [WorkItem(str(n), n, 1e9, loop.create_future()) for n in (9, 1, 5, 2, 8, 3)]
    batches = split_by_budget(items, _policy(max_batch_size=4, max_batch_tokens=20))
    flat = [i.length for b in batches for i in b]
    assert flat == sorted(flat) == [1, 2, 3, 5, 8, 9]
    for batch in batches:
        assert len(batch) <= 4 and len(batch) * batch[-1].length <= 20
    loop.close()


def test_split_trades_padding_against_the_cost_of_a_run() -> None:
    loop = asyncio.new_event_loop()
    items = [WorkItem(str(n), n, 1e9, loop.create_future()) for n in [2] * 30 + [40] * 2]
    cheap_runs = split_by_budget(items, _policy(max_batch_size=64, max_batch_tokens=10_000, batch_overhead_tokens=4))
    dear_runs = split_by_budget(items, _policy(max_batch_size=64, max_batch_tokens=10_000,
                                               batch_overhead_tokens=5000))
    assert [len(b) for b in cheap_runs] == [30, 2]  # the short ones are not padded to 40
    assert [len(b) for b in dear_runs] == [32]  # one run is cheaper than two
    loop.close()


@pytest.mark.parametrize("limits", [{"max_batch_size": 64, "max_batch_tokens": 8192},
                                    {"max_batch_size": 8, "max_batch_tokens": 200}])
def test_split_finds_the_least_cost_that_every_start_would(limits: dict[str, int]) -> None:
    """The split looks at fewer starts than there are (the best one never moves back): its cost
    is still the least, within the limits (what trying every start finds: loadtests/turn_cost.py)."""
    import random

    from loadtests.turn_cost import split_every_start

    rng = random.Random(7)
    loop = asyncio.new_event_loop()
    for overhead in (0, 3, 12, 48, 400):
        policy = _policy(**limits, batch_overhead_tokens=overhead)
        for _ in range(150):
            lengths = [rng.choice((rng.randint(1, 12), rng.randint(5, 60), rng.randint(40, 300)))
                       for _ in range(rng.randint(1, 64))]
            items = [WorkItem(str(n), n, 1e9, loop.create_future()) for n in lengths]
            batches = split_by_budget(items, policy)
            assert sorted(i.length for b in batches for i in b) == sorted(lengths)
            for batch in batches:
                assert len(batch) == 1 or (len(batch) <= policy.max_batch_size
                                           and len(batch) * batch[-1].length <= policy.max_batch_tokens)
            cost = sum(overhead + len(b) * b[-1].length for b in batches)
            assert cost == sum(overhead + len(b) * b[-1] for b in split_every_start(items, policy))
    loop.close()


async def test_concurrent_requests_share_batches_and_each_gets_its_own_result() -> None:
    runner = Recorder(delay=0.02)
    batcher = DynamicBatcher("m", runner, _policy(max_batch_size=8))
    batcher.start()
    words = [f"w{i}" for i in range(40)]
    results = await asyncio.gather(*(batcher.submit(w, len(w), time.monotonic() + 5) for w in words))
    assert results == [w.upper() for w in words]
    assert max(len(b) for b in runner.batches) == 8
    assert len(runner.batches) < 40
    assert batcher.in_flight == 0
    await batcher.close()


async def test_a_failing_batch_fails_only_its_requests() -> None:
    runner = Recorder(fail_on="bad")
    batcher = DynamicBatcher("m", runner, _policy(max_batch_size=1))
    batcher.start()
    ok, bad = await asyncio.gather(batcher.submit("ok", 2, time.monotonic() + 5),
                                   batcher.submit("bad", 3, time.monotonic() + 5), return_exceptions=True)
    assert ok == "OK"
    assert isinstance(bad, InferenceFailed) and "boom" in str(bad)
    assert await batcher.submit("again", 5, time.monotonic() + 5) == "AGAIN"
    await batcher.close()


async def test_full_queue_is_refused_at_once() -> None:
    runner = Recorder(delay=0.2)
    batcher = DynamicBatcher("m", runner, _policy(max_batch_size=1, max_queue_size=2))
    batcher.start()
    tasks = [asyncio.create_task(batcher.submit(f"x{i}", 1, time.monotonic() + 5)) for i in range(6)]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    refused = [r for r in results if isinstance(r, Overloaded)]
    assert refused and all(r.headers.get("Retry-After") for r in refused)
    assert all(isinstance(r, str | Overloaded) for r in results)
    await batcher.close()


async def test_expired_requests_are_dropped_before_compute() -> None:
    runner = Recorder(delay=0.15)
    batcher = DynamicBatcher("m", runner, _policy(max_batch_size=1))
    batcher.start()
    slow = asyncio.create_task(batcher.submit("first", 1, time.monotonic() + 5))
    await asyncio.sleep(0.02)
    with pytest.raises(DeadlineExceeded):
        await batcher.submit("late", 1, time.monotonic() + 0.05)
    assert await slow == "FIRST"
    await asyncio.sleep(0.05)
    assert ["late"] not in runner.batches
    assert batcher.in_flight == 0
    await batcher.close()


async def test_drain_finishes_accepted_work() -> None:
    runner = Recorder(delay=0.01)
    batcher = DynamicBatcher("m", runner, _policy(max_batch_size=2))
    batcher.start()
    tasks = [asyncio.create_task(batcher.submit(f"d{i}", 1, time.monotonic() + 5)) for i in range(10)]
    await asyncio.sleep(0)
    assert await batcher.drain(5.0)
    # every future is resolved by now; the tasks awaiting them finish on their next turn
    assert await asyncio.gather(*tasks) == [f"D{i}" for i in range(10)]
    await batcher.close()


async def test_the_in_flight_gauge_counts_texts_from_acceptance_to_answer() -> None:
    release = threading.Event()

    def held(payloads: list[str]) -> list[str]:
        release.wait(5)
        return [p.upper() for p in payloads]

    def gauge() -> float | None:
        return REGISTRY.get_sample_value("seqserve_in_flight", {"model": "fl", "version": ""})

    batcher = DynamicBatcher("fl", held, _policy(max_batch_size=2))
    batcher.start()
    tasks = [asyncio.create_task(batcher.submit(f"t{i}", 1, time.monotonic() + 5)) for i in range(5)]
    await asyncio.sleep(0.1)  # two in a batch the runner holds, three queued: all five in flight
    assert gauge() == 5
    release.set()
    assert await asyncio.gather(*tasks) == [f"T{i}" for i in range(5)]
    assert gauge() == 0
    await batcher.close()


async def test_several_instances_run_batches_at_once() -> None:
    active, peak = 0, 0
    lock = threading.Lock()

    def slow(payloads: list[str]) -> list[str]:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.05)
        with lock:
            active -= 1
        return payloads

    batcher = DynamicBatcher("m", slow, _policy(max_batch_size=2, instances=2))
    batcher.start()
    words = [f"w{i}" for i in range(12)]
    assert await asyncio.gather(*(batcher.submit(w, 1, time.monotonic() + 5) for w in words)) == words
    assert peak == 2
    await batcher.close()


async def test_helpers_run_only_the_batches_the_first_worker_leaves_them() -> None:
    ran: list[tuple[str, list[str]]] = []
    lock = threading.Lock()
    queued = 0  # what the "block" batch waits for: that many texts queued behind it
    helper_started = threading.Event()

    def run(payloads: list[str]) -> list[str]:
        name = threading.current_thread().name
        with lock:
            ran.append((name, list(payloads)))
        if payloads == ["block"]:
            assert _wait_until(lambda: batcher.queue.qsize() >= queued)
        elif name == "seqserve-m-1":
            helper_started.set()
        elif payloads[0].startswith("2-") and queued >= 15:  # the helper takes its batch meanwhile
            assert helper_started.wait(5)
        return [p.upper() for p in payloads]

    policy = _policy(max_batch_size=24, instances=2, helpers_share_windows=True, batch_overhead_tokens=1)
    batcher = DynamicBatcher("m", run, policy)
    batcher.start()
    deadline = time.monotonic() + 10
    for i in range(3):  # one request at a time: the helper forms no window of its own
        assert await batcher.submit(f"x{i}", 1, deadline) == f"X{i}"
    assert {name for name, _ in ran} == {"seqserve-m-0"}

    async def window(*lengths: int) -> list[tuple[str, list[str]]]:
        """Batches run for one window of five texts of each length (the first worker busy while
        they are queued), by thread."""
        nonlocal queued
        before, queued = len(ran), 5 * len(lengths)
        blocker = asyncio.ensure_future(batcher.submit("block", 1, deadline))
        while len(ran) == before:  # the first worker is busy: what comes now waits for its next window
            await asyncio.sleep(0.001)
        texts = [[(f"{n}-{i}", n) for i in range(5)] for n in lengths]
        answers = await asyncio.gather(blocker, *(batcher.submit_all(t, deadline) for t in texts))
        assert answers == ["BLOCK", *([p.upper() for p, _ in t] for t in texts)]
        return sorted((name, sorted(batch)) for name, batch in ran[before + 1 :])

    # a window of fewer than half MAX_BATCH_SIZE texts, cut by length in two batches: both on the
    # first worker
    assert [name for name, _ in await window(2, 40)] == ["seqserve-m-0"] * 2
    # of half or more, in three: the first worker runs the shortest, a helper the longest, the
    # other either
    three = {batch[0].split("-")[0]: name for name, batch in await window(2, 20, 40)}
    assert three["2"] == "seqserve-m-0" and three["40"] == "seqserve-m-1" and len(three) == 3
    await batcher.close()


def _wait_until(condition: Callable[[], bool], within_s: float = 5.0) -> bool:
    """On a thread: whether ``condition`` became true within ``within_s``."""
    until = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > until:
            return False
        time.sleep(0.001)
    return True


async def test_while_the_first_worker_is_replaced_the_helpers_form_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    import service.batching as batching

    monkeypatch.setattr(batching, "_BACKOFF_S", (1.0,) * 4)  # the first worker's replacement waits a second
    _plant_faults(monkeypatch, 1, RuntimeError("planted fault outside the model call"))
    names: list[str] = []
    runner = Recorder()

    def run(payloads: list[str]) -> list[str]:
        names.append(threading.current_thread().name)
        return runner(payloads)

    batcher = DynamicBatcher("m", run, _policy(instances=2, helpers_share_windows=True))
    batcher.start()
    with pytest.raises(InferenceFailed, match="planted fault"):  # the first worker's fault
        await batcher.submit("x", 1, time.monotonic() + 10)
    started = time.monotonic()
    assert await batcher.submit("y", 1, time.monotonic() + 10) == "Y"
    assert time.monotonic() - started < 0.5 and names == ["seqserve-m-1"]  # not a second later
    await batcher.close()


async def test_closing_answers_the_batches_left_for_the_helpers() -> None:
    loop = asyncio.get_running_loop()
    batcher = DynamicBatcher("m", Recorder(), _policy(instances=2, helpers_share_windows=True))
    batcher.start()
    await batcher.close()
    left = [WorkItem("x", 1, time.monotonic() + 5, loop.create_future())]
    batcher._spare.put(left)  # as the first worker leaves them, when no helper took them
    await batcher.close()
    assert left[0].future.done()
    with pytest.raises(NotReady, match="shut down"):
        left[0].future.result()


@pytest.mark.skipif(sys.platform != "linux", reason="a thread's own OS priority is Linux's")
async def test_the_workers_after_the_first_run_at_a_lower_os_priority() -> None:
    base = os.getpriority(os.PRIO_PROCESS, os.getpid())
    if base >= 19:
        pytest.skip("this process runs at the lowest priority already")
    batcher = DynamicBatcher("m", Recorder(), _policy(instances=3, helper_nice=5, helpers_share_windows=True))
    batcher.start()
    expected = [base, min(base + 5, 19), min(base + 5, 19)]

    def priorities() -> list[int]:
        return [os.getpriority(os.PRIO_PROCESS, t.native_id or 0) for t in batcher.threads]

    assert await _becomes(lambda: priorities() == expected), priorities()
    assert await batcher.submit("x", 1, time.monotonic() + 5) == "X"
    await batcher.close()


def _affinities(batcher: DynamicBatcher) -> list[set[int]]:
    return [os.sched_getaffinity(t.native_id or 0) for t in batcher.threads]


linux_only = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="a thread's own CPU set is Linux's")


@linux_only
async def test_the_workers_run_on_the_cpus_the_policy_pins_them_to() -> None:
    cpus = tuple(sorted(os.sched_getaffinity(0)))[-2:]
    batcher = DynamicBatcher("m", Recorder(), _policy(instances=3, thread_cpus=cpus))  # type: ignore[arg-type]
    batcher.start()
    expected = [{cpus[0]}, {cpus[-1]}, {cpus[0]}]  # the third goes round again
    assert await _becomes(lambda: _affinities(batcher) == expected), _affinities(batcher)
    assert await batcher.submit("x", 1, time.monotonic() + 5) == "X"
    await batcher.close()


@linux_only
async def test_a_replaced_worker_runs_on_the_cpu_of_the_one_it_replaces(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = max(os.sched_getaffinity(0))
    batcher = DynamicBatcher("m", Recorder(), _policy(instances=1, thread_cpus=(cpu,)))  # type: ignore[arg-type]
    batcher.start()
    first = batcher.threads[0]
    _plant_faults(monkeypatch, 1, RuntimeError("planted fault outside the model call"))
    with pytest.raises(InferenceFailed, match="planted fault"):
        await batcher.submit("x", 1, time.monotonic() + 10)
    assert await batcher.submit("again", 1, time.monotonic() + 10) == "AGAIN"  # served by the replacement
    assert batcher.threads[0] is not first and _affinities(batcher) == [{cpu}]
    await batcher.close()


@pytest.mark.parametrize("gap_s", [1.05, 0.0])
async def test_a_lone_client_does_not_wait_for_company_that_never_comes(gap_s: float) -> None:
    # its requests come further apart than the delay, or closer (each as soon as the last is
    # answered) but with nothing else in flight: nobody else can join them. A wide gap between the
    # delay and the bound: a busy CI machine must not make this fail
    batcher = DynamicBatcher("m", Recorder(), _policy(max_queue_delay_s=1.0))
    batcher.start()
    for i in range(3 if gap_s else 12):
        start = time.monotonic()
        assert await batcher.submit(f"x{i}", 1, time.monotonic() + 5) == f"X{i}"
        assert time.monotonic() - start < 0.5, f"request {i} waited for company"
        await asyncio.sleep(gap_s)
    await batcher.close()


@pytest.mark.parametrize("instances", [1, 2])
async def test_the_rest_of_a_lone_request_too_big_for_one_batch_is_no_company(instances: int) -> None:
    # 12 texts in batches of 8: the second window holds the rest of the same request, which is
    # all that is in flight
    runner = Recorder()
    batcher = DynamicBatcher("m", runner, _policy(max_queue_delay_s=1.0, instances=instances))
    batcher.start()
    words = [f"w{i}" for i in range(12)]
    for i in range(6):
        start = time.monotonic()
        assert await batcher.submit_all([(w, 1) for w in words], time.monotonic() + 5) == [w.upper() for w in words]
        assert time.monotonic() - start < 0.5, f"request {i} waited for company"
    assert max(len(b) for b in runner.batches) == 8
    await batcher.close()


async def test_a_window_waits_for_company_while_other_requests_are_in_flight() -> None:
    # the rule stays as it was under load: a worker free while another runs waits for the next
    runner = Recorder(delay=0.2)
    batcher = DynamicBatcher("m", runner, _policy(max_queue_delay_s=1.0, instances=2))
    batcher.start()
    deadline = time.monotonic() + 5
    first = asyncio.ensure_future(batcher.submit("a", 1, deadline))  # runs alone on one worker
    while not runner.batches:  # "a" is running
        await asyncio.sleep(0.005)
    second = asyncio.ensure_future(batcher.submit("b", 1, deadline))  # "a" in flight: waits
    await asyncio.sleep(0.05)
    third = asyncio.ensure_future(batcher.submit("c", 1, deadline))
    assert await asyncio.gather(first, second, third) == ["A", "B", "C"]
    assert sorted(map(sorted, runner.batches)) == [["a"], ["b", "c"]]
    await batcher.close()


@pytest.mark.parametrize("instances", [1, 2])
async def test_a_request_bigger_than_a_window_takes_turns_with_later_ones(instances: int) -> None:
    runner = Recorder(delay=0.02)
    batcher = DynamicBatcher("m", runner, _policy(max_batch_size=8, max_queue_delay_s=0.0, instances=instances))
    batcher.start()
    deadline = time.monotonic() + 10
    big = asyncio.ensure_future(batcher.submit_all([(f"b{i}", 1) for i in range(80)], deadline))
    while not runner.batches:  # its first window is running
        await asyncio.sleep(0.001)
    assert await batcher.submit("short", 1, deadline) == "SHORT"
    # its window started behind the ones running and the one part queued when it came (and
    # another worker's), not behind all ten of the big request's
    started = next(i for i, batch in enumerate(runner.batches) if "short" in batch)
    assert started <= 2 * instances and not big.done()
    assert await big == [f"B{i}" for i in range(80)]
    assert sorted(p for b in runner.batches for p in b if p != "short") == sorted(f"b{i}" for i in range(80))
    assert batcher.admission.waiting == 0 and batcher.in_flight == 0
    await batcher.close()


async def test_the_held_back_part_of_a_request_that_ends_early_never_runs() -> None:
    runner = Recorder(delay=0.05)
    batcher = DynamicBatcher("m", runner, _policy(max_batch_size=4, max_queue_size=100))
    batcher.start()
    big = asyncio.ensure_future(batcher.submit_all([(f"b{i}", 1) for i in range(40)], time.monotonic() + 10))
    while not runner.batches:
        await asyncio.sleep(0.001)
    big.cancel()  # its client left
    with pytest.raises(asyncio.CancelledError):
        await big
    assert batcher.admission.waiting == 0  # every place given back at once, the held-back ones too
    await asyncio.sleep(0.3)
    assert sum(len(b) for b in runner.batches) <= 8  # the window running and at most the part queued
    assert batcher.in_flight == 0  # nothing left for a drain to wait for
    assert await batcher.submit("next", 1, time.monotonic() + 5) == "NEXT"
    assert await batcher.drain(1.0)
    await batcher.close()


async def test_a_request_is_admitted_whole_or_refused_whole() -> None:
    runner = Recorder(delay=0.3)
    batcher = DynamicBatcher("m", runner, _policy(max_batch_size=1, max_queue_size=3))
    batcher.start()
    busy = asyncio.create_task(batcher.submit("busy", 1, time.monotonic() + 5))
    await asyncio.sleep(0.1)  # the worker holds "busy"; nothing waits
    two = asyncio.create_task(batcher.submit_all([("a", 1), ("b", 1)], time.monotonic() + 5))
    await asyncio.sleep(0)
    with pytest.raises(Overloaded):  # 2 waiting + 2 more > 3: refused whole, on arrival
        await batcher.submit_all([("c", 1), ("d", 1)], time.monotonic() + 5)
    # both wait, one queued: a request bigger than a window (here 1) is queued a window at a time
    assert batcher.admission.waiting == 2 and batcher.queue.qsize() == 1
    assert await two == ["A", "B"] and await busy == "BUSY"
    assert all(batch != ["c"] and batch != ["d"] for batch in runner.batches)  # never computed
    await batcher.close()


async def test_a_request_that_stops_waiting_gives_its_places_back_at_once() -> None:
    batcher = DynamicBatcher("m", Recorder(delay=0.5), _policy(max_batch_size=1, max_queue_size=2))
    batcher.start()
    busy = asyncio.create_task(batcher.submit("busy", 1, time.monotonic() + 5))
    await asyncio.sleep(0.1)
    with pytest.raises(DeadlineExceeded):
        await batcher.submit_all([("late1", 1), ("late2", 1)], time.monotonic() + 0.05)
    assert batcher.admission.waiting == 0  # still queued, but nobody waits for them: places free
    assert await batcher.submit_all([("x", 1), ("y", 1)], time.monotonic() + 5) == ["X", "Y"]
    await busy
    await batcher.close()


async def _becomes(condition: Callable[[], bool], within_s: float = 2.0) -> bool:
    """The thread marks itself healthy just after handing its answer over: wait for it."""
    end = time.monotonic() + within_s
    while not condition() and time.monotonic() < end:
        await asyncio.sleep(0.01)
    return condition()


def _plant_faults(monkeypatch: pytest.MonkeyPatch, left: int, error: BaseException) -> dict[str, int]:
    """The next ``left`` batch splits raise ``error``: a worker thread's fault outside the model
    call. The dict returned holds how many are left (a test may set it again)."""
    import service.batching as batching

    faults = {"left": left}
    real_split = batching.split_by_budget

    def split_broken(items: list, policy: BatchPolicy) -> list:
        if faults["left"]:
            faults["left"] -= 1
            raise error
        return real_split(items, policy)

    monkeypatch.setattr(batching, "split_by_budget", split_broken)
    return faults


async def test_a_worker_that_raises_outside_the_model_call_is_replaced(monkeypatch: pytest.MonkeyPatch,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    from service.access_log import CURRENT_REQUEST_ID

    faults = _plant_faults(monkeypatch, 1, RuntimeError("planted fault outside the model call"))
    batcher = DynamicBatcher("m", Recorder(), _policy(instances=1))
    batcher.start()
    first_thread = batcher.threads[0]
    started = time.monotonic()
    CURRENT_REQUEST_ID.set("req-1")  # as the middleware sets it for each request's task
    with pytest.raises(InferenceFailed, match="planted fault"):  # answered 500 at once, not at the deadline
        await batcher.submit("x", 1, time.monotonic() + 10)
    assert time.monotonic() - started < 5
    # the log line names what the thread held, so that an operator finds the requests it failed
    # (written before they are answered)
    assert "answering the 1 texts it held with 500 (requests req-1)" in caplog.text
    assert await batcher.submit("again", 1, time.monotonic() + 10) == "AGAIN"  # a new thread serves
    assert batcher.threads[0] is not first_thread and batcher.threads[0].is_alive()
    assert await _becomes(lambda: batcher.healthy)
    # a replacement that fails too before doing any work turns the model unhealthy (not ready) ...
    faults["left"] = 2
    for _ in range(2):
        with pytest.raises(InferenceFailed):
            await batcher.submit("x", 1, time.monotonic() + 10)
    assert not batcher.healthy and batcher.unhealthy_s > 0  # for how long: liveness reads it
    # ... until a thread gets work done again
    assert await batcher.submit("back", 1, time.monotonic() + 10) == "BACK"
    assert await _becomes(lambda: batcher.healthy) and batcher.in_flight == 0 and batcher.unhealthy_s == 0
    await batcher.close()


async def test_where_no_new_thread_can_start_the_failed_one_carries_on(monkeypatch: pytest.MonkeyPatch,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Out of memory (or under a pids limit) the replacement's start raised, the model was left
    with no thread, and every request was admitted and answered 504 at its deadline."""
    def no_threads(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    batcher = DynamicBatcher("m", Recorder(), _policy(instances=1))
    batcher.start()
    only = batcher.threads[0]
    _plant_faults(monkeypatch, 1, MemoryError("planted"))
    monkeypatch.setattr(threading.Thread, "start", no_threads)
    with pytest.raises(InferenceFailed, match="planted"):
        await batcher.submit("x", 1, time.monotonic() + 10)
    started = time.monotonic()
    assert await batcher.submit("again", 1, time.monotonic() + 10) == "AGAIN"  # not a 504 at the deadline
    assert time.monotonic() - started < 5
    assert batcher.threads == [only] and only.is_alive()
    assert "no new thread could be started (can't start new thread); the failed one carries on" in caplog.text
    monkeypatch.undo()  # threads again (closing joins in one)
    await batcher.close()
    assert not only.is_alive()


async def test_a_replacement_that_fails_before_its_creator_listed_it_is_replaced_too(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A replacement looked itself up in ``threads`` to be replaced in turn; listed only after its
    start returned, one that failed at once (its creator descheduled meanwhile) died unlisted, and
    the model was left with no thread (the reviewer's race)."""
    real_start = threading.Thread.start

    def slow_start(self: threading.Thread) -> None:  # the creator descheduled right after start
        real_start(self)
        time.sleep(0.3)

    batcher = DynamicBatcher("m", Recorder(), _policy(instances=1))
    batcher.start()
    _plant_faults(monkeypatch, 3, RuntimeError("planted"))
    monkeypatch.setattr(threading.Thread, "start", slow_start)
    for _ in range(3):
        with pytest.raises(InferenceFailed):
            await batcher.submit("x", 1, time.monotonic() + 10)
    assert await batcher.submit("ok", 1, time.monotonic() + 5) == "OK"  # not a 504 at the deadline
    monkeypatch.undo()
    await batcher.close()


async def test_a_worker_gives_way_after_a_batch_not_after_waiting_for_work() -> None:
    asked: list[float] = []  # when the worker gave way (a fake: the test is about the worker)

    def give_way() -> float:
        asked.append(time.monotonic())
        return 0.01

    before = REGISTRY.get_sample_value("seqserve_gave_way_seconds_total", {"model": "gw", "version": ""}) or 0.0
    batcher = DynamicBatcher("gw", lambda payloads: [p.upper() for p in payloads],
                             _policy(max_batch_size=1, max_queue_delay_s=0.0))
    batcher.start(give_way)
    assert await batcher.submit("a", 1, time.monotonic() + 5) == "A"
    await asyncio.sleep(0.3)  # the worker waits for work meanwhile: turns that find none
    assert await batcher.submit("b", 1, time.monotonic() + 5) == "B"
    await asyncio.sleep(0.1)
    await batcher.close()
    # once after each batch: not after the turns that found none
    assert len(asked) == 2, asked
    after = REGISTRY.get_sample_value("seqserve_gave_way_seconds_total", {"model": "gw", "version": ""})
    assert after == pytest.approx(before + 0.01 * len(asked))


def test_texts_failing_together_leave_no_unretrieved_exception() -> None:
    """A deadline passing in the decoder fails every text of a request at once; the request raises
    the first, and the others must be retrieved, or asyncio logs "Future exception was never
    retrieved" at ERROR for each (as a streamed gRPC request did)."""
    import gc
    from types import SimpleNamespace

    from service.batching import AnsweredFromThreads

    unretrieved: list[str] = []

    async def run() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: unretrieved.append(context["message"]))
        answered = AnsweredFromThreads("m", 8)
        answered._open(None)  # accepting, on this loop
        items = [SimpleNamespace(future=asyncio.get_running_loop().create_future(), waiting=False) for _ in range(3)]
        for item in items:
            item.future.set_exception(DeadlineExceeded("deadline passed during decoding"))
        with pytest.raises(DeadlineExceeded):
            await answered._answer_all(items, time.monotonic() + 5)
        del items
        gc.collect()

    asyncio.run(run())
    assert unretrieved == []


async def test_the_texts_of_a_request_that_timed_out_count_as_past_their_deadline() -> None:
    # the 504 marks them before cancelling them: a thread that read the clock just before the
    # deadline (uvloop's timer runs by a cached, millisecond clock) still counts them as expired,
    # not as their client gone
    gate, running = threading.Event(), threading.Event()

    def held(payloads: list[str]) -> list[str]:
        running.set()
        gate.wait(5)
        return payloads

    batcher = DynamicBatcher("dl", held, _policy())
    batcher.start()
    first = asyncio.ensure_future(batcher.submit("a", 1, time.monotonic() + 5))  # holds the worker
    while not running.is_set():
        await asyncio.sleep(0.001)
    with pytest.raises(DeadlineExceeded):
        await batcher.submit_all([("b", 1)], time.monotonic() + 0.05)
    late = batcher.queue.get_nowait()
    assert batcher.queue.empty()
    assert late.expired and late.future.cancelled()

    def dropped(reason: str) -> float:
        labels = {"model": "dl", "version": "", "reason": reason}
        return REGISTRY.get_sample_value("seqserve_dropped_total", labels) or 0.0

    before = dropped("deadline"), dropped("client_gone")
    count_cancelled(batcher.labels, late, late.deadline - 0.001)
    assert (dropped("deadline"), dropped("client_gone")) == (before[0] + 1, before[1])
    gate.set()
    assert await first == "a"
    await batcher.close()
