"""numpy's row operations for the decode lanes' threads, done without letting go of the GIL: for
the lanes' host rows (service/runners/row_ops.py ``HostRowPool``) and their bookkeeping
(service/decode_scheduler.py).

numpy releases the GIL around ``arange`` of any size and around copies of more than a few
hundred elements (fancy indexing, ``take``, slice assignment), and so does
``may_share_memory``. The thread then has to take it back, and under load the event loop or the
other lane holds it: at 64 greedy clients a re-gather of the rows cost 355 us of a lane's CPU and
1,600 us of wall time, most of it waiting for the GIL after operations of a few microseconds
(docs/benchmarks.md, stop 44). A copy through ``memoryview`` slices is a ``memcpy`` with the GIL
held; row numbers come from one cached ``arange``.

Every array here is C-contiguous with rows along axis 0; a row's leading bytes are its first
source positions (axis 1), so a row cut or zero-padded to another width is its first bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Rows = Sequence[int] | np.ndarray  # row indices


_POSITIONS = np.arange(0, dtype=np.int64)


def positions(count: int) -> np.ndarray:
    """``np.arange(count)`` (int64), read-only: a view of one cached array, grown when too short."""
    global _POSITIONS
    cached = _POSITIONS  # one read: another lane's thread may grow it meanwhile
    if count > len(cached):
        cached = np.arange(max(count, 2 * len(cached), 1024), dtype=np.int64)  # lets the GIL go, once
        cached.flags.writeable = False
        if len(cached) > len(_POSITIONS):  # never a shorter one in place of a longer
            _POSITIONS = cached
    return cached[:count]


def _bytes(array: np.ndarray) -> memoryview:
    if not array.flags.c_contiguous:
        raise ValueError("gil_held copies C-contiguous arrays only")
    if not array.nbytes:  # memoryview.cast refuses a shape with a zero in it
        return memoryview(bytearray())
    return array.data.cast("B")


def _row_bytes(array: np.ndarray) -> int:
    return array.itemsize * math.prod(array.shape[1:])  # not np.prod: a reduction for a tuple of ints


def put_rows(dst: np.ndarray, to: Rows, src: np.ndarray, frm: Rows) -> None:
    """``dst[to[i]] = src[frm[i]]``, each row cut or zero-padded to ``dst``'s width (axis 1), for
    arrays of one dtype and the same dimensions after axis 1. ``dst`` and ``src`` share no memory
    unless they are the same array (rows moved within it; where a row is both written and read,
    every row is read first). Not ``np.may_share_memory``: it releases the GIL too."""
    if len(to) != len(frm):
        raise ValueError(f"{len(to)} rows to write from {len(frm)}")
    if not len(to):
        return
    if dst.dtype != src.dtype or dst.shape[2:] != src.shape[2:]:
        raise ValueError(f"rows of {src.dtype} {src.shape} do not fit {dst.dtype} {dst.shape}")
    into_rows: Sequence[int] = to.tolist() if isinstance(to, np.ndarray) else to  # plain ints slice fastest
    from_rows: Sequence[int] = frm.tolist() if isinstance(frm, np.ndarray) else frm
    out, into = _bytes(dst), _row_bytes(dst)
    rows, each = _bytes(src), _row_bytes(src)
    common = min(into, each)
    parts: list[memoryview | bytes] = [rows[f * each : f * each + common] for f in from_rows]
    if dst is src and not set(into_rows).isdisjoint(from_rows):
        parts = [bytes(part) for part in parts]  # a row would be written before it is read: read them all first
    tail = bytes(into - common)
    for t, part in zip(into_rows, parts, strict=True):
        out[t * into : t * into + common] = part
        if tail:
            out[t * into + common : (t + 1) * into] = tail


def take_rows(src: np.ndarray, frm: Rows) -> np.ndarray:
    """``src[frm]``, a new array."""
    out = np.empty((len(frm), *src.shape[1:]), src.dtype)
    put_rows(out, range(len(frm)), src, frm)
    return out


def stack_rows(parts: Sequence[np.ndarray]) -> np.ndarray:
    """``np.concatenate(parts)`` along axis 0 (one part: itself)."""
    if len(parts) == 1:
        return parts[0]
    out = np.empty((sum(len(p) for p in parts), *parts[0].shape[1:]), parts[0].dtype)
    into, at = _bytes(out), 0
    for part in parts:
        if part.dtype != out.dtype or part.shape[1:] != out.shape[1:]:
            raise ValueError(f"cannot stack {part.dtype} {part.shape} under {out.dtype} {out.shape}")
        into[at : at + part.nbytes] = _bytes(part)
        at += part.nbytes
    return out
