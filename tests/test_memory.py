"""service/memory.py: what only reference cycles keep is freed, and glibc gives its free memory back."""

from __future__ import annotations

import gc
import sys
import weakref

import pytest

from service.memory import return_freed_memory


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector frees it
        self.payload = bytearray(8 << 20)


def _rss_kib() -> int:
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0])


def test_a_cycle_is_freed_and_the_heap_given_back() -> None:
    gc.disable()  # as a server whose full collections are rare
    try:
        node = _Node()
        alive = weakref.ref(node)
        del node
        assert alive() is not None  # only the cycle keeps it
        gave_back = return_freed_memory()
        assert alive() is None
    finally:
        gc.enable()
    assert gave_back == sys.platform.startswith("linux")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_small_blocks_freed_under_live_ones_go_back_to_the_system() -> None:
    """Freed memory below blocks still in use stays resident until trimmed (what an unloaded
    session's buffers did): 64 MiB of small blocks, every other one kept."""
    blocks = [bytes(4000) for _ in range(16_000)]
    keep = blocks[::64]
    del blocks
    before = _rss_kib()
    assert return_freed_memory()
    assert _rss_kib() < before - 16 * 1024, (before, _rss_kib())
    del keep
