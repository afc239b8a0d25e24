"""loadtests/wake_cost.py: two processes waking each other, pinned or not."""

from __future__ import annotations

import os
import re
import signal

import pytest

from loadtests import wake_cost


def test_a_round_trip_takes_time_and_cpu_and_leaves_this_process_unpinned() -> None:
    allowed = os.sched_getaffinity(0)
    cpu = min(allowed)
    result = wake_cost.round_trip(200, (cpu, cpu))
    # two hand-overs a round trip, each a write and a read at least: neither can be free
    assert result.wall_us > 0 and result.cpu_us > 0
    assert os.sched_getaffinity(0) == allowed  # unpinned again afterwards


def test_a_parent_that_stops_early_does_not_wait_for_ever(monkeypatch: pytest.MonkeyPatch) -> None:
    # the parent fails after its first measured hand-over: the child, waiting for the next byte,
    # must read the end of its input and leave, or waiting for it would hang
    calls = {"n": 0}
    real_write = os.write

    def failing_write(fd: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("stopped")
        return real_write(fd, data)

    def hung(*_: object) -> None:
        raise TimeoutError("round_trip waited for a child that never ended")

    monkeypatch.setattr(wake_cost.os, "write", failing_write)
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)
    try:
        with pytest.raises(OSError, match="stopped"):
            wake_cost.round_trip(1000, None)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_the_placements_follow_the_cpus_this_process_may_use() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    where = wake_cost.placements()
    assert where["one CPU"] == (allowed[0], allowed[0]) and where["the scheduler's choice"] is None
    assert ("two CPUs" in where) is (len(allowed) > 1)


def test_the_table_has_a_row_per_placement(capsys: pytest.CaptureFixture[str]) -> None:
    wake_cost.main(["--round-trips", "100", "--rounds", "1"])
    out = capsys.readouterr().out
    rows = re.findall(r"^\| (one CPU|two CPUs|the scheduler's choice) \| ([\d.]+) \| ([\d.]+) \|$", out, re.M)
    assert [name for name, _, _ in rows] == list(wake_cost.placements()), out
    assert all(float(wall) > 0 and float(cpu) > 0 for _, wall, cpu in rows), out


def test_too_few_round_trips_are_refused() -> None:
    with pytest.raises(SystemExit):
        wake_cost.main(["--round-trips", "1"])
