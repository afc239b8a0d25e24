"""stderr that never blocks on a stalled reader (service/log_sink.py): lines go at once while the
pipe has room, wait for the sink's thread when it has none, and are dropped whole and counted
beyond the buffer."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time

import httpx
import pytest

from loadtests.server import ServerProcess, metric_value
from service.log_sink import ATOMIC_BYTES, LogSink, whole_lines
from tests.conftest import COMMITTED_MODELS, ROOT

LINE = "x" * 99 + "\n"  # 100 bytes


def _read_all(fd: int, into: bytearray) -> threading.Thread:
    """Read ``fd`` to its end in a thread (a reader that comes back)."""

    def read() -> None:
        while chunk := os.read(fd, 65536):
            into.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return reader


def test_while_the_pipe_has_room_lines_go_at_once_in_order() -> None:
    read_end, write_end = os.pipe()
    sink = LogSink(write_end)
    sink.write("one\n")
    sink.write("two\nthree\n")
    assert os.read(read_end, 100) == b"one\ntwo\nthree\n"  # no thread needed: written by the caller
    os.close(read_end)
    os.close(write_end)


@pytest.mark.skipif(sys.platform != "linux", reason="a thread's own OS priority is Linux's")
def test_started_early_the_writer_keeps_the_priority_of_the_thread_that_started_it() -> None:
    # the server starts it before the models' lowered worker threads (service/batching.py), so a
    # line one of them logs first does not start it at their priority
    read_end, write_end = os.pipe()
    sink = LogSink(write_end)
    sink.start()
    thread = sink._thread
    assert thread is not None and thread.is_alive()
    sink.start()  # once
    assert sink._thread is thread
    assert os.getpriority(os.PRIO_PROCESS, thread.native_id or 0) == os.getpriority(os.PRIO_PROCESS, 0)
    sink.write("one\n")
    assert os.read(read_end, 100) == b"one\n"
    os.close(read_end)
    os.close(write_end)


def test_a_stalled_reader_never_blocks_the_writer_and_what_does_not_fit_is_dropped_whole(
        caplog: pytest.LogCaptureFixture) -> None:
    read_end, write_end = os.pipe()  # nobody reads until the end: the pipe holds 64 KiB
    sink = LogSink(write_end, limit_bytes=20_000)
    dropped: list[int] = []
    sink.on_dropped = dropped.append
    started = time.monotonic()
    for _ in range(1000):  # 100 KB: 64 KB into the pipe, 20 KB waiting for the thread, the rest dropped
        sink.write(LINE)
    assert time.monotonic() - started < 1  # never waited for the reader
    assert not sink.flush(0.1)
    assert 10_000 <= sum(dropped) * 100 <= 40_000  # 100 KB - the pipe (at most 64 KiB) - 20 KB waiting
    received = bytearray()
    with caplog.at_level(logging.WARNING, "seqserve.log"):
        reader = _read_all(read_end, received)
        assert sink.flush(5)
        deadline = time.monotonic() + 5
        while "log lines dropped" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
    os.close(write_end)
    reader.join(5)
    lines = received.decode().splitlines()
    assert all(line == LINE.strip() for line in lines) and len(lines) + sum(dropped) == 1000  # none torn
    assert f"{sum(dropped)} log lines dropped: the reader of stderr fell behind by more than 19 KiB" in caplog.text


def test_lines_the_stream_refuses_are_counted() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone: EPIPE (Python ignores SIGPIPE)
    sink = LogSink(write_end)
    dropped: list[int] = []
    sink.on_dropped = dropped.append
    sink.write("a\nb\n")
    assert dropped == [2]
    os.close(write_end)


def test_a_line_logged_just_before_a_crash_is_out() -> None:
    """Left to a thread, it was lost when the process died in native code (the deaths a worker's
    signal now names)."""
    code = ("import logging, os; from service.logs import configure_logging; from service.settings import Settings; "
            "configure_logging(Settings.model_construct(log_format='text', log_level='info')); "
            "logging.getLogger('seqserve').info('loading model x'); os.abort()")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == -6 and "loading model x" in run.stderr


def test_writes_are_whole_lines_of_at_most_a_pipes_atomic_write() -> None:
    """Several workers share stderr: a larger write could be interleaved with another's mid-line.
    Cut on bytes: a line of non-ASCII text is longer in bytes than in characters."""
    data = "".join(f"{i:05d}{'é' * (i % 300)}\n" for i in range(2000)).encode()
    pieces = whole_lines(data, ATOMIC_BYTES)
    assert b"".join(pieces) == data and len(pieces) > 1
    assert all(piece.endswith(b"\n") and len(piece) <= ATOMIC_BYTES for piece in pieces)
    assert whole_lines(b"a" * 5000 + b"\nb\n", ATOMIC_BYTES) == [b"a" * 5000 + b"\n", b"b\n"]  # a long line alone


def test_a_server_whose_log_reader_stops_reading_keeps_answering() -> None:
    """Its event loop wrote the access log itself: once the pipe's 64 KiB were full, health probes,
    inference and gRPC hung until the reader came back."""
    read_end, write_end = os.pipe()  # nobody reads read_end until the end
    server = ServerProcess(COMMITTED_MODELS, access_log="true", log_fd=write_end)
    os.close(write_end)
    received = bytearray()
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=5) as client:
            long_path = "/v2/models/" + "n" * 900  # ~1 KB access-log lines: the pipe fills in ~70 requests
            for _ in range(400):
                assert client.get(long_path).status_code == 404
            started = time.monotonic()
            assert client.get("/v2/health/ready").status_code == 200
            assert client.post("/v1/sentiment", json={"text": "fine"}).status_code == 200
            assert time.monotonic() - started < 2
        assert metric_value(server.url, "seqserve_log_lines_dropped_total") == 0  # 400 KB fit in the buffer
        reader = _read_all(read_end, received)  # the reader comes back
        server.proc.terminate()
        assert server.proc.wait(timeout=60) == 0
        reader.join(10)
    finally:
        server.stop()
    assert received.decode().count('"status":404') == 400  # every line written once the reader read again
