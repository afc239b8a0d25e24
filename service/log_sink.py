"""stderr that never blocks the server on a log reader that stalls.

Every log line the service writes (the access log, ``logging``'s, uvicorn's through it) goes
through one ``LogSink``. Written from the event loop, a reader that stopped reading (Docker's
default blocking log delivery behind a slow driver, a stalled journald stream, a ``| tee`` that
stopped) froze the server once the pipe's 64 KiB were full: health probes, inference and gRPC
all hung, and with several workers the supervisor's watchdog hung on its own line, then killed
a worker that would have recovered.

So lines are written at once, by the caller, while the pipe has room for them (``poll``), as
before: in order with what else writes to stderr (a traceback), and out before a crash. Only
when a write would block do they wait in a buffer for the sink's thread, which writes them as
the reader takes them, and everything after them waits behind them. As Docker's
``mode=non-blocking`` and Python's ``QueueHandler`` do, the buffer is bounded (``LIMIT_BYTES``):
lines that do not fit, or that the stream refuses (a reader gone), are dropped whole, counted
(``seqserve_log_lines_dropped_total``), and said in one WARNING line once the reader takes lines
again. Each write holds whole lines, at most ``ATOMIC_BYTES`` where it can: a pipe takes that
much whole, so workers sharing one never tear each other's lines.
"""

from __future__ import annotations

import atexit
import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable

# a pipe takes a write of up to PIPE_BUF bytes whole (POSIX; 4 KiB on Linux), and one that polls
# writable has room for that much
ATOMIC_BYTES = 4096
LIMIT_BYTES = 4 << 20  # about 16,000 access-log lines: seconds of a stalled reader at full load
EXIT_WAIT_S = 3.0  # at exit, how long the waiting lines may take to go out
STDERR = 2  # the descriptor, whatever became of sys.stderr (None when started with 2>&-)


class LogSink:
    def __init__(self, fd: int = STDERR, limit_bytes: int = LIMIT_BYTES) -> None:
        self.fd = fd
        self.limit_bytes = limit_bytes
        self._waiting: deque[bytes] = deque()  # pieces of whole lines, for the thread
        self._bytes = 0  # waiting, or being written by the thread
        self._dropped = 0  # lines dropped since the last notice of it
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._poll = select.poll()
        self._poll.register(fd, select.POLLOUT)
        # counts dropped lines where a process has metrics (service/metrics.py sets it; a
        # supervisor, which must not import prometheus-client early, has none)
        self.on_dropped: Callable[[int], None] | None = None

    def write(self, lines: str) -> None:
        """Write ``lines`` (whole lines, each ending with a line break) now if the stream has room,
        else leave them to the thread; never blocks on a reader. Dropped, and counted, when the
        buffer is full."""
        pieces = whole_lines(lines.encode("utf-8", "backslashreplace"), ATOMIC_BYTES)
        lost = 0
        with self._lock:
            if not self._bytes:  # nothing waits: these may go now, in order
                pieces, lost = self._write_while_room(pieces)
            size = sum(len(piece) for piece in pieces)
            if not pieces:
                pass
            elif self._bytes + size > self.limit_bytes:
                full = sum(piece.count(b"\n") for piece in pieces)
                self._dropped += full  # said once the reader has taken what waits
                lost += full
            elif not self._thread_running():  # no thread to wait for: as before, the caller writes
                lost += sum(self._write(piece) for piece in pieces)
            else:
                self._waiting.extend(pieces)
                self._bytes += size
                self._lock.notify()
        if lost and self.on_dropped is not None:
            self.on_dropped(lost)

    def _write_while_room(self, pieces: list[bytes]) -> tuple[list[bytes], int]:
        """Write pieces while the stream has room for the next: the ones left over, and the lines
        the stream refused."""
        lost = 0
        for at, piece in enumerate(pieces):
            if len(piece) > ATOMIC_BYTES or not self._poll.poll(0):  # it could block: the thread's
                return pieces[at:], lost
            lost += self._write(piece)
        return [], lost

    def _write(self, data: bytes) -> int:
        """Write all of ``data``; the lines lost where the stream refuses them (a reader gone:
        EPIPE; the descriptor closed), else 0."""
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError:
            return data.count(b"\n") or 1
        return 0

    def start(self) -> None:
        """Start the writer thread now, from the calling thread, whose OS priority it inherits: the
        server starts it before the models' worker threads, some of which run at a lower one
        (service/batching.py ``lower_priority``), so that a line they log first does not start it
        there."""
        self._thread_running()

    def _thread_running(self) -> bool:
        """The writer thread, started on first need; False where none can start (memory, a pids limit)."""
        if self._thread is None:
            thread = threading.Thread(target=self._run, name="seqserve-log", daemon=True)
            try:
                thread.start()
            except RuntimeError:
                return False
            self._thread = thread
        return True

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._waiting:
                    self._lock.wait()
                piece = self._waiting.popleft()
            lost = self._write(piece)  # blocks while the reader does not read: only this thread
            with self._lock:
                self._bytes -= len(piece)
                self._dropped += lost
                dropped = self._dropped if not self._bytes else 0
                if dropped:
                    self._dropped = 0
                self._lock.notify_all()
            if lost and self.on_dropped is not None:
                self.on_dropped(lost)
            if dropped:  # said in the log's own format, once the reader has taken what waited
                logging.getLogger("seqserve.log").warning(
                    "%d log lines dropped: the reader of stderr fell behind by more than %d KiB, or was gone",
                    dropped, self.limit_bytes >> 10)

    def flush(self, timeout_s: float = EXIT_WAIT_S) -> bool:
        """Wait until every waiting line is written, at most ``timeout_s``; True if they all were."""
        end = time.monotonic() + timeout_s
        with self._lock:
            while self._bytes:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
        return True


def whole_lines(data: bytes, size: int) -> list[bytes]:
    """``data`` (whole lines) cut into pieces of whole lines of at most ``size`` bytes each (a
    longer line is a piece of its own)."""
    pieces: list[bytes] = []
    start = 0
    while start < len(data):
        end = start + size
        if end < len(data):
            cut = data.rfind(b"\n", start, end)
            end = data.find(b"\n", end) + 1 if cut < 0 else cut + 1
            end = end or len(data)
        pieces.append(data[start:end])
        start = end
    return pieces


stderr = LogSink()
atexit.register(stderr.flush)  # after the access log's (imported later): atexit runs last-in first
