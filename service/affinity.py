"""A model's threads pinned one to a CPU, where they are enough to keep every CPU busy.

Serving sentiment at 64 clients on a 2-core VM, the cores were idle 6-12% of the time although
requests were queued. `perf sched timehist` showed why: both of the model's worker threads
runnable on one core, taking turns there for up to 5 ms, while the other core idled after the
event loop, which had run on it, went to sleep. Linux's load balancer does not move a thread
that has just run (it is "cache hot"), and a core whose idle spells are short (the event loop's
core) does not look for work to pull when it goes idle; the next periodic balance came
milliseconds later.

One model thread per CPU leaves no CPU without work while there is a backlog; the event loop and
every other thread still run wherever the scheduler puts them. `python -m loadtests.cpu_share
--clients 64 --versus pin_model_threads=off` (docs/benchmarks.md, stop 51): 1.00-1.09x the
requests in five runs of paired rounds (1.02x in the longest), with the same CPU a request; 1.04x
at 16 clients, the same at 1 and for greedy translation at 64.

``auto`` pins only where that measurement applies: one server process (several, each pinning
its threads from the first CPU, would stack them on the same CPUs) and a model with at least as
many threads as the process has CPUs. On a large machine, or in a container limited by a CPU
quota rather than a CPU set (all the host's CPUs allowed), the threads are left to the scheduler.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Literal

log = logging.getLogger("seqserve")

PinMode = Literal["auto", "on", "off"]


def allowed_cpus() -> tuple[int, ...]:
    """The CPUs this process may run on, in order (Linux); () where the OS does not say."""
    if not hasattr(os, "sched_getaffinity"):
        return ()
    return tuple(sorted(os.sched_getaffinity(0)))


def thread_cpus(mode: PinMode, threads: int, processes: int = 1,
                cpus: Sequence[int] | None = None) -> tuple[int, ...]:
    """The CPUs a model's ``threads`` are pinned to, its i-th thread to the i-th modulo their
    number; () leaves them where the scheduler puts them.

    ``on`` spreads them over the process's CPUs (``cpus``: by default ``allowed_cpus()``), one a
    CPU while there are CPUs left; ``auto`` does so only with one server process and at least as
    many threads as CPUs (the module's docstring); ``off`` never. One CPU leaves nothing to spread.
    """
    cpus = allowed_cpus() if cpus is None else tuple(cpus)
    if mode == "off" or len(cpus) < 2 or threads < 1:
        return ()
    if mode == "auto" and (processes > 1 or threads < len(cpus)):
        return ()
    return cpus[:threads]


def cpu_of(cpus: Sequence[int], thread: int) -> int | None:
    """The CPU of a model's ``thread``-th thread (None: not pinned)."""
    return cpus[thread % len(cpus)] if cpus else None


def pin_thread(cpu: int | None) -> None:
    """Run the calling thread on ``cpu`` only (Linux, where a thread's affinity is its own);
    None leaves it as it is. A sandbox that forbids it leaves it too, with a warning."""
    if cpu is None:
        return
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as exc:
        log.warning("could not pin a model thread to CPU %d: %s", cpu, exc)
