"""Memory a model version held, given back to the system once the version is gone.

With model control, each load of a new sentiment version (and unload of the old) left ~5.6 MB
resident for good (a soak: 40 cycles took RSS from 275 to 483 MB, linearly), for two reasons:
- an unloaded version's engine, batcher and runner refer to one another (the batcher calls the
  engine's bound method), so only Python's cyclic garbage collector frees them and their ONNX
  Runtime sessions, and its full collections are rare in a server;
- glibc's malloc then keeps the memory freed in the middle of its heap for later allocations
  instead of returning it (Python's own allocations did not grow: tracemalloc).
A full collection and ``malloc_trim(0)`` after 6 cycles: RSS 153 -> 124 MB (117 MB before the
cycles). Where the C library is not glibc (musl, macOS) only the collection runs.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import sys
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own C library
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def return_freed_memory() -> bool:
    """Free what only reference cycles keep, then give the C library's free memory back to the
    system; False where the latter has no way. Tens of milliseconds (the collection holds the
    GIL; the trim walks the heap): for rare events such as an unload, not per request."""
    gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
