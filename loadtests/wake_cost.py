"""What waking a sleeping process costs on this machine, on the same CPU and across CPUs.

    python -m loadtests.wake_cost [--round-trips 20000] [--rounds 3]

Two processes hand a byte back and forth over a pair of pipes, each blocking in ``read`` until
the other writes: every hand-over wakes a process that sleeps. Printed per round trip (two
wake-ups): the wall time and the CPU both processes used (``getrusage``), with both pinned to one
CPU, to two different CPUs, and left to the scheduler; the median of the rounds. Linux only
(``os.sched_setaffinity``, ``os.fork``).

Why: a request to the server wakes its event loop (the client's bytes, a model thread's answers,
the GIL handed back by a model thread) and the client (the answer), and on the 2-core VMs of
issue 15 a wake-up across CPUs cost ~15 us of CPU on each side against ~3 on one CPU (the guest
halts an idle CPU; waking it is an interrupt through the hypervisor). That is part of what
``make bench`` counts as serving: the same code costs more on a machine whose wake-ups cost more
(docs/benchmarks.md, stop 53).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class RoundTrip:
    wall_us: float  # a round trip: two hand-overs, each waking the other process
    cpu_us: float  # both processes' CPU (user + system) a round trip


def _cpu_s(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def round_trip(round_trips: int, cpus: tuple[int, int] | None) -> RoundTrip:
    """Hand a byte back and forth ``round_trips`` times between this process (on ``cpus[0]``)
    and a child (on ``cpus[1]``); None: both where the scheduler puts them."""
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    allowed = os.sched_getaffinity(0)
    children_before = _cpu_s(resource.RUSAGE_CHILDREN)
    pid = os.fork()
    if pid == 0:  # the child: answers each byte, then leaves without Python's clean-up
        try:
            os.close(to_child_w)  # the parent's ends: its closing them is the child's end of input
            os.close(to_parent_r)
            if cpus is not None:
                os.sched_setaffinity(0, {cpus[1]})
            for _ in range(round_trips):
                if not os.read(to_child_r, 1):  # the parent stopped early (an error, Ctrl+C)
                    break
                os.write(to_parent_w, b"x")
        finally:
            os._exit(0)
    os.close(to_child_r)
    os.close(to_parent_w)
    try:
        if cpus is not None:
            os.sched_setaffinity(0, {cpus[0]})
        os.write(to_child_w, b"x")  # one unmeasured round trip: both are running and waiting
        os.read(to_parent_r, 1)
        started, cpu_before = time.perf_counter(), _cpu_s(resource.RUSAGE_SELF)
        for _ in range(round_trips - 1):
            os.write(to_child_w, b"x")
            os.read(to_parent_r, 1)
        wall = time.perf_counter() - started
        own = _cpu_s(resource.RUSAGE_SELF) - cpu_before
    finally:
        os.close(to_child_w)  # first: a child still waiting for a byte reads the end and leaves
        os.close(to_parent_r)
        os.waitpid(pid, 0)
        os.sched_setaffinity(0, allowed)
    # the child's CPU is known only once it has ended, for all its round trips: the measured ones' share
    child = _cpu_s(resource.RUSAGE_CHILDREN) - children_before
    measured = round_trips - 1
    return RoundTrip(wall / measured * 1e6, (own + child * measured / round_trips) / measured * 1e6)


def placements() -> dict[str, tuple[int, int] | None]:
    """Where the two processes run: one CPU, two CPUs (where this process may use two), anywhere."""
    allowed = sorted(os.sched_getaffinity(0))
    out: dict[str, tuple[int, int] | None] = {"one CPU": (allowed[0], allowed[0])}
    if len(allowed) > 1:
        out["two CPUs"] = (allowed[0], allowed[1])
    out["the scheduler's choice"] = None
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--round-trips", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    if args.round_trips < 2 or args.rounds < 1:
        p.error("--round-trips must be at least 2 and --rounds at least 1")
    where = placements()
    results: dict[str, list[RoundTrip]] = {name: [] for name in where}
    for _ in range(args.rounds):  # interleaved: the machine's drift is shared
        for name, cpus in where.items():
            results[name].append(round_trip(args.round_trips, cpus))
    print(f"a byte handed back and forth between two processes ({args.round_trips} round trips, two wake-ups "
          f"each; median of {args.rounds} rounds)")
    print("| placement | wall us a round trip | CPU us a round trip (both) |")
    print("|---|---:|---:|")
    for name, rows in results.items():
        wall = statistics.median(r.wall_us for r in rows)
        cpu = statistics.median(r.cpu_us for r in rows)
        print(f"| {name} | {wall:.1f} | {cpu:.1f} |")


if __name__ == "__main__":
    main()
