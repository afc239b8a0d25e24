"""A warning when the process nears its limit on open files, and a note when it is clear again.

Each connection is a descriptor. At the limit the event loop (uvloop, libuv) accepts each new
connection and closes it at once, and says nothing: clients see resets, health probes fail, and
the log only had gRPC's own "File descriptor limit reached" line, or nothing with gRPC off. The
start raises the soft limit to the hard one (service/__main__.py); where the hard one is low
(``docker --ulimit nofile=1024:1024``), this says so while it happens. ``process_open_fds`` and
``process_max_fds`` (prometheus-client, one worker) are the metric.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource

log = logging.getLogger("seqserve.open_files")

CHECK_EVERY_S = 1.0
WARN_AT = 0.9  # of the soft limit
CLEAR_AT = 0.8  # below this again, the episode is over (no warning per second around one value)


def open_files(at_most: int | None = None) -> int:
    """Descriptors open in this process; ``at_most`` (the limit) when none is left to list them."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError as exc:
        if exc.errno == errno.EMFILE and at_most is not None:
            return at_most
        raise


def limit() -> int | None:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


class OpenFilesWatch:
    """Says, once per episode, when open files pass ``WARN_AT`` of the limit, and when they fall
    below ``CLEAR_AT`` again."""

    def __init__(self) -> None:
        self.near = False
        self.peak = 0

    def check(self, count: int, most: int | None) -> None:
        if most is None:
            return
        if not self.near and count >= WARN_AT * most:
            self.near, self.peak = True, count
            log.warning("%d open files of the limit of %d: at the limit new connections are closed as they are "
                        "accepted (clients see resets, health probes fail); raise it (ulimit -n, docker --ulimit "
                        "nofile, LimitNOFILE=) or spread the clients over more servers", count, most)
        elif self.near:
            self.peak = max(self.peak, count)
            if count < CLEAR_AT * most:
                self.near = False
                log.info("open files down to %d of %d (at most %d meanwhile)", count, most, self.peak)

    async def run(self) -> None:
        """For the server's life: look once a second, off the event loop (listing /proc/self/fd
        costs ~1 ms per 1,000 descriptors: 7 ms at 10,000 connections)."""
        if not os.path.isdir("/proc/self/fd"):  # not Linux
            return
        while True:
            most = limit()
            try:
                count = await asyncio.to_thread(open_files, most)
            except RuntimeError:  # no thread for it (memory, a pids limit)
                count = open_files(most)
            self.check(count, most)
            await asyncio.sleep(CHECK_EVERY_S)
