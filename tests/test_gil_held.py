"""service/runners/gil_held.py: numpy's answers, with the GIL held throughout."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from service.runners.gil_held import positions, put_rows, stack_rows, take_rows

RNG = np.random.default_rng(0)


def _rows(count: int, width: int, dim: int) -> np.ndarray:
    return RNG.standard_normal((count, width, dim)).astype(np.float32)


@pytest.mark.parametrize("src_width", [3, 5, 8])
def test_put_rows_cuts_or_zero_pads_each_row_to_the_destination_width(src_width: int) -> None:
    src, dst = _rows(4, src_width, 6), _rows(5, 5, 6)
    expected = dst.copy()
    common = min(5, src_width)
    expected[[4, 0, 2], :common] = src[[1, 3, 0], :common]
    expected[[4, 0, 2], common:] = 0.0
    put_rows(dst, [4, 0, 2], src, np.array([1, 3, 0]))
    np.testing.assert_array_equal(dst, expected)


def test_put_rows_on_a_mask_of_two_dimensions() -> None:
    src = np.ones((2, 3), np.float32)
    dst = np.full((3, 5), 7.0, np.float32)
    put_rows(dst, range(1, 3), src, range(2))
    np.testing.assert_array_equal(dst, [[7] * 5, [1, 1, 1, 0, 0], [1, 1, 1, 0, 0]])


@pytest.mark.parametrize(("to", "frm"), [([0, 1], [5, 6]), ([1, 2, 3], [0, 1, 2]), ([0, 1], [1, 0])])
def test_rows_moved_within_one_array_are_read_before_they_are_written(to: list[int], frm: list[int]) -> None:
    rows = _rows(8, 4, 3)
    expected = rows.copy()
    expected[to] = rows[frm]  # numpy reads the right side whole first
    put_rows(rows, to, rows, frm)
    np.testing.assert_array_equal(rows, expected)


def test_take_and_stack_rows_answer_as_numpy() -> None:
    state = _rows(6, 2, 4)
    keep = np.array([5, 0, 0, 3])
    np.testing.assert_array_equal(take_rows(state, keep), state[keep])
    parts = [state[:2], _rows(3, 2, 4), state[4:]]
    np.testing.assert_array_equal(stack_rows(parts), np.concatenate(parts))
    assert stack_rows(parts[:1]) is parts[0]


def test_mismatched_rows_are_refused() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        put_rows(_rows(2, 3, 4), [0], _rows(2, 3, 5), [0])
    with pytest.raises(ValueError, match="do not fit"):
        put_rows(_rows(2, 3, 4), [0], _rows(2, 3, 4).astype(np.float64), [0])
    with pytest.raises(ValueError, match="C-contiguous arrays only"):
        put_rows(_rows(2, 3, 4), [0], _rows(2, 3, 8)[:, :, ::2], [0])


def test_positions_are_a_read_only_arange_of_any_length() -> None:
    np.testing.assert_array_equal(positions(5), np.arange(5))
    long = positions(5000)
    np.testing.assert_array_equal(long, np.arange(5000))
    assert long.dtype == np.int64 and not long.flags.writeable
    assert len(positions(0)) == 0


@pytest.fixture
def rival() -> Iterator[list[int]]:
    """A thread that counts, and lets the GIL go after each count; with a switch interval far
    longer than the test, it gets the GIL only when this thread lets it go of its own accord."""
    count, stop = [0], threading.Event()

    def spin() -> None:
        while not stop.is_set():
            count[0] += 1
            time.sleep(0)  # lets the GIL go: this thread takes it back

    interval = sys.getswitchinterval()
    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    sys.setswitchinterval(30.0)
    try:
        yield count
    finally:
        sys.setswitchinterval(interval)
        stop.set()
        thread.join()


def _times_let_go(count: list[int], call: Callable[[], object], tries: int = 50) -> int:
    """In how many of ``tries`` calls the rival ran."""
    runs = 0
    for _ in range(tries):
        before = count[0]
        call()
        runs += count[0] != before
    return runs


def test_the_row_operations_keep_the_gil(rival: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    big, other = _rows(64, 32, 384), _rows(64, 32, 384)  # rows of ~12,000 floats
    state = _rows(64, 2, 192)
    keep = RNG.permutation(64)
    calls: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {  # ours, and numpy's
        "put_rows": (lambda: put_rows(big, range(32), other, keep[:32]),
                     lambda: big.__setitem__(slice(0, 32), other[keep[:32]])),
        "put_rows in place": (lambda: put_rows(big, [0, 1], big, [40, 41]),
                              lambda: big.__setitem__([0, 1], big[[40, 41]])),
        "take_rows": (lambda: take_rows(state, keep), lambda: state[keep]),
        "stack_rows": (lambda: stack_rows([big, other]), lambda: np.concatenate([big, other])),
    }
    # the probe sees numpy's versions let the GIL go (in 4-50 of 50 calls each on the 2-core VM)
    if not any(_times_let_go(rival, numpys, tries=200) for _, numpys in calls.values()):
        pytest.skip("the rival never saw numpy let the GIL go on this machine")
    for name, (ours, _) in calls.items():
        assert _times_let_go(rival, ours) == 0, name
    positions(4096)  # grown once; after that, never np.arange (which lets the GIL go)
    monkeypatch.setattr(np, "arange", None)
    assert _times_let_go(rival, lambda: positions(64)) == 0
    np.testing.assert_array_equal(positions(4096), np.fromiter(range(4096), np.int64))
