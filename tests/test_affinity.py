"""Model threads pinned one to a CPU (service/affinity.py)."""

from __future__ import annotations

import logging
import os
import threading

import pytest

from service.affinity import allowed_cpus, cpu_of, pin_thread, thread_cpus

linux_only = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="a thread's own CPU set is Linux's")


@pytest.mark.parametrize(("mode", "threads", "processes", "cpus", "expected"), [
    ("auto", 2, 1, (0, 1), (0, 1)),  # 2 instances on 2 cores: what was measured
    ("auto", 3, 1, (4, 5), (4, 5)),  # more threads than CPUs: each CPU gets one, then round again
    ("auto", 2, 1, (0, 1, 2, 3), ()),  # fewer threads than CPUs: the scheduler finds idle ones
    ("auto", 2, 2, (0, 1), ()),  # several server processes would stack theirs on the same CPUs
    ("on", 2, 1, (0, 1, 2, 3), (0, 1)),
    ("on", 2, 2, (0, 1), (0, 1)),
    ("off", 2, 1, (0, 1), ()),
    ("on", 2, 1, (3,), ()),  # one CPU: nothing to spread
    ("on", 0, 1, (0, 1), ()),
])
def test_which_cpus_a_models_threads_are_pinned_to(mode: str, threads: int, processes: int, cpus: tuple[int, ...],
                                                   expected: tuple[int, ...]) -> None:
    assert thread_cpus(mode, threads, processes, cpus) == expected  # type: ignore[arg-type]


def test_the_ith_thread_takes_the_ith_cpu_round_again_past_the_last() -> None:
    assert [cpu_of((4, 5), i) for i in range(3)] == [4, 5, 4]
    assert cpu_of((), 0) is None


def _affinity_in_a_thread(cpu: int | None) -> set[int]:
    seen: set[int] = set()

    def run() -> None:
        pin_thread(cpu)
        seen.update(os.sched_getaffinity(0))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return seen


@linux_only
def test_a_pinned_thread_runs_on_its_cpu_and_the_others_keep_theirs() -> None:
    before = os.sched_getaffinity(0)
    cpu = allowed_cpus()[-1]
    assert _affinity_in_a_thread(cpu) == {cpu}
    assert os.sched_getaffinity(0) == before  # the calling thread's own, not the process's
    assert _affinity_in_a_thread(None) == before


@linux_only
def test_a_cpu_the_process_may_not_use_leaves_the_thread_as_it_was_with_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    before = os.sched_getaffinity(0)
    with caplog.at_level(logging.WARNING, logger="seqserve"):
        assert _affinity_in_a_thread(max(allowed_cpus()) + 4096) == before
    assert "could not pin a model thread to CPU" in caplog.text
