"""stderr, written by a thread of its own, so that a log reader that stalls never stalls the server.

Every log line of the process (the access log, ``logging``'s, uvicorn's through it) goes through
one ``LogSink``: the caller appends its text to a buffer and returns; the sink's thread writes it.
Written from the event loop itself, a reader that stopped reading (Docker's default blocking log
delivery behind a slow driver, a stalled journald stream, a ``| tee`` that stopped) froze the
server once the pipe's 64 KiB were full: health probes, inference and gRPC all hung, and with
several workers the supervisor's watchdog hung on its own line, then killed a worker that would
have recovered. As Docker's ``mode=non-blocking`` and Python's ``QueueHandler`` do, the buffer is
bounded (``LIMIT_BYTES``): lines that do not fit are dropped, counted
(``seqserve_log_lines_dropped_total``), and said in one WARNING line once the reader takes
lines again. Lines are never torn: each write holds whole lines, at most a pipe's atomic write
where it can (``ATOMIC_BYTES``).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TextIO

# a pipe takes a write of up to PIPE_BUF bytes whole (POSIX; 4 KiB on Linux): several workers
# share stderr, and a larger write could be interleaved with another's mid-line
ATOMIC_BYTES = 4096
LIMIT_BYTES = 4 << 20  # about 16,000 access-log lines: seconds of a stalled reader at full load
EXIT_WAIT_S = 3.0  # at exit, how long the pending lines may take to go out


class LogSink:
    def __init__(self, stream: TextIO | None = None, limit_bytes: int = LIMIT_BYTES) -> None:
        self._stream = stream  # None: sys.stderr as it is when the lines are written
        self.limit_bytes = limit_bytes
        self._pending: deque[str] = deque()
        self._bytes = 0
        self._dropped = 0  # lines dropped since the last notice of it
        self._writing = False  # the thread holds lines taken from the buffer and not yet written
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None
        # counts dropped lines where a process has metrics (service/metrics.py sets it; a
        # supervisor, which must not import prometheus-client early, has none)
        self.on_dropped: Callable[[int], None] | None = None

    def write(self, lines: str) -> None:
        """Queue ``lines`` (whole lines, each ending with a line break) for stderr; never blocks
        on the stream. Dropped, and counted, when the buffer is full."""
        with self._ready:
            if self._bytes + len(lines) > self.limit_bytes:
                self._dropped += lines.count("\n")
                dropped = lines.count("\n")
            else:
                self._pending.append(lines)
                self._bytes += len(lines)
                dropped = 0
                if self._thread is None:
                    self._start()
                self._ready.notify()
        if dropped and self.on_dropped is not None:
            self.on_dropped(dropped)

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="seqserve-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._pending:
                    self._ready.wait()
                text = "".join(self._pending)
                self._pending.clear()
                self._bytes = 0
                self._writing = True
                dropped, self._dropped = self._dropped, 0
            with contextlib.suppress(OSError, ValueError):  # a reader gone (EPIPE), a stream closed
                for chunk in whole_lines(text, ATOMIC_BYTES):
                    self._put(chunk)
            with self._ready:
                self._writing = False
                self._ready.notify_all()
            if dropped:  # said in the log's own format, once the reader takes lines again
                logging.getLogger("seqserve.log").warning(
                    "%d log lines dropped: the reader of stderr fell behind by more than %d MiB", dropped,
                    self.limit_bytes >> 20)

    def _put(self, chunk: str) -> None:
        """One write of whole lines: on stderr, straight to its descriptor (Python's buffer would
        cut a large write where it fills), so that workers sharing one pipe never tear a line."""
        if self._stream is not None:
            self._stream.write(chunk)
            self._stream.flush()
            return
        data = chunk.encode(sys.stderr.encoding or "utf-8", "backslashreplace")
        fd = sys.stderr.fileno()
        while data:  # a line longer than a pipe takes at once goes in parts
            data = data[os.write(fd, data):]

    def flush(self, timeout_s: float = EXIT_WAIT_S) -> bool:
        """Wait until every queued line is written, at most ``timeout_s``; True if they all were."""
        end = time.monotonic() + timeout_s
        with self._ready:
            while self._pending or self._writing:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._ready.wait(left)
        return True


def whole_lines(text: str, size: int) -> list[str]:
    """``text`` (whole lines) cut into pieces of whole lines of at most ``size`` characters each
    (a longer line is a piece of its own)."""
    pieces: list[str] = []
    start = 0
    while start < len(text):
        end = start + size
        if end < len(text):
            cut = text.rfind("\n", start, end)
            end = text.find("\n", end) + 1 if cut < 0 else cut + 1
            end = end or len(text)
        pieces.append(text[start:end])
        start = end
    return pieces


stderr = LogSink()
atexit.register(stderr.flush)  # before the access log's (imported later): atexit runs last-in first
