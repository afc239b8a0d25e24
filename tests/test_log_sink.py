"""stderr written by its own thread (service/log_sink.py): a log reader that stalls never stalls
the server, and lines it cannot hold are dropped whole and counted."""

from __future__ import annotations

import io
import logging
import os
import threading
import time

import httpx
import pytest

from loadtests.server import ServerProcess, metric_value
from service.log_sink import LogSink
from tests.conftest import COMMITTED_MODELS


class Stalled(io.StringIO):
    """A stream whose writes block until ``release`` is set (a reader that stopped reading)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.release.wait(10)
        return super().write(text)


def test_a_stalled_stream_never_blocks_the_writer_and_what_does_not_fit_is_dropped_whole(
        caplog: pytest.LogCaptureFixture) -> None:
    stream = Stalled()
    sink = LogSink(stream, limit_bytes=1000)
    dropped: list[int] = []
    sink.on_dropped = dropped.append
    line = "x" * 99 + "\n"
    started = time.monotonic()
    for _ in range(40):  # 4,000 bytes: the first write is taken by the (stalled) thread, ten more fit
        sink.write(line)
    assert time.monotonic() - started < 0.5  # never waited for the stream
    assert not sink.flush(0.1)  # still held by the stalled stream
    with caplog.at_level(logging.WARNING, "seqserve.log"):
        stream.release.set()
        assert sink.flush(5)
        deadline = time.monotonic() + 5
        while "log lines dropped" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
    written = stream.getvalue().splitlines()
    assert all(text == line.strip() for text in written)  # whole lines, none torn
    assert len(written) + sum(dropped) == 40 and sum(dropped) > 0
    assert f"{sum(dropped)} log lines dropped: the reader of stderr fell behind by more than 0 MiB" in caplog.text


def test_a_server_whose_log_reader_stops_reading_keeps_answering() -> None:
    """Its event loop wrote the access log itself: once the pipe's 64 KiB were full, health probes,
    inference and gRPC hung until the reader came back."""
    read_end, write_end = os.pipe()  # nobody reads read_end until the end
    server = ServerProcess(COMMITTED_MODELS, access_log="true", log_fd=write_end)
    os.close(write_end)
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
        with os.fdopen(read_end, "rb") as reader:
            server.proc.terminate()
            log = reader.read().decode()
            assert server.proc.wait(timeout=60) == 0
    finally:
        server.stop()
    assert log.count('"status":404') == 400  # every line written once the reader read again


def test_writes_are_whole_lines_of_at_most_a_pipes_atomic_write() -> None:
    """Several workers share stderr: a larger write could be interleaved with another's mid-line."""
    from service.log_sink import ATOMIC_BYTES, whole_lines

    text = "".join(f"{i:05d}{'x' * (i % 300)}\n" for i in range(2000))
    pieces = whole_lines(text, ATOMIC_BYTES)
    assert "".join(pieces) == text and len(pieces) > 1
    assert all(piece.endswith("\n") and len(piece) <= ATOMIC_BYTES for piece in pieces)
    assert whole_lines("a" * 5000 + "\nb\n", ATOMIC_BYTES) == ["a" * 5000 + "\n", "b\n"]  # a long line alone
