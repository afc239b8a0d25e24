"""service/access_log.py: one JSON object per line, the lines of one event-loop pass in one write."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
from collections.abc import Callable
from typing import Any

from service.access_log import AccessLog


class _Counting(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


async def test_lines_of_one_loop_pass_go_out_in_one_write_after_it() -> None:
    stream = _Counting()
    log = AccessLog(stream)
    for i in range(5):
        log.write({"request_id": str(i), "status": 200})
    assert stream.writes == 0  # not yet: the pass is not over
    await asyncio.sleep(0)
    lines = stream.getvalue().splitlines()
    assert stream.writes == 1 and [json.loads(line)["request_id"] for line in lines] == ["0", "1", "2", "3", "4"]


def test_lines_off_the_event_loop_at_once_and_pending_ones_when_flushed_at_exit() -> None:
    stream = _Counting()
    log = AccessLog(stream)
    log.write({"request_id": "a"})  # no running loop: at once
    assert json.loads(stream.getvalue())["request_id"] == "a"

    async def log_then_exit() -> None:
        log.write({"request_id": "b"})
        assert stream.getvalue().count("\n") == 1  # waiting for the end of the pass
        log.flush()  # what the exit hook does, before that pass comes

    asyncio.run(log_then_exit())
    assert [json.loads(line)["request_id"] for line in stream.getvalue().splitlines()] == ["a", "b"]


def test_a_later_event_loop_on_the_same_thread_gets_its_own_pass_and_a_thread_without_one_writes_at_once() -> None:
    stream = _Counting()
    log = AccessLog(stream)

    async def one_pass(request_id: str) -> None:
        log.write({"request_id": request_id})
        assert stream.getvalue().count(f'"{request_id}"') == 0  # the loop it runs on: after its pass
        await asyncio.sleep(0)
        assert stream.getvalue().count(f'"{request_id}"') == 1

    asyncio.run(one_pass("first"))  # the loop remembered is stopped and closed after this
    asyncio.run(one_pass("second"))  # a new loop on the same thread is found, not the old one
    log.write({"request_id": "no loop"})  # none running: at once
    assert [json.loads(line)["request_id"] for line in stream.getvalue().splitlines()] == \
        ["first", "second", "no loop"]


def test_a_forked_child_writes_its_own_pid() -> None:
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: its line goes back through the pipe
        try:
            stream = io.StringIO()
            AccessLog(stream).write({"request_id": "child"})
            os.write(write, stream.getvalue().encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as lines:
        entry = json.loads(lines.read())
    os.waitpid(child, 0)
    assert entry["pid"] == child != os.getpid()


def test_a_line_is_the_time_level_logger_and_pid_then_the_requests_fields() -> None:
    stream = io.StringIO()
    AccessLog(stream).write({"request_id": "r-1", "status": 503, "latency_ms": 0.07})
    entry = json.loads(stream.getvalue())
    assert list(entry) == ["time", "level", "logger", "pid", "request_id", "status", "latency_ms"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
    assert entry["level"] == "INFO" and entry["logger"] == "seqserve.access" and entry["pid"] == os.getpid()


def test_a_path_with_line_separators_stays_one_ascii_line() -> None:
    stream = io.StringIO()
    path = "/v1/sentiment\u2028x\u0085y\u2029z/caf\u00e9"  # percent-decoded by the server: the client's choice
    AccessLog(stream).write({"path": path, "status": 404})
    text = stream.getvalue()
    assert text.isascii() and len(text.splitlines()) == 1
    assert json.loads(text)["path"] == path


def test_a_long_path_is_cut_so_that_a_line_stays_whole(access_lines: Callable[[], list[dict[str, Any]]]) -> None:
    """A refused 64 KiB target was logged whole: lines of 130 KB, which log shippers split (Docker at
    16 KiB) into pieces that are not JSON."""
    from service.access_log import record_request

    record_request("GET", "/" + "a" * 100_000, "protocol", 414, 0.001, "id-1", True)
    record_request("GET", "/short", "unmatched", 404, 0.001, "id-2", True)
    long, short = access_lines()
    assert len(long["path"]) < 1100 and long["path"].endswith("... (100001 characters)") and short["path"] == "/short"


def test_named_ids_are_each_once_in_order_and_bounded() -> None:
    from service.access_log import named_ids

    assert named_ids(["a", "a", "b", "", "a"]) == "a, b"  # a 64-text request's texts share one id
    assert named_ids([]) == "none known"
    many = named_ids(str(i) for i in range(20))
    assert many.startswith("0, 1, 2") and many.endswith("15 and 4 more")


def test_a_failed_batch_is_logged_with_the_ids_of_its_requests_over_http_and_grpc(
        monkeypatch: Any, caplog: Any) -> None:
    """A batch that fails answers 500 to each of its requests; its log line names them, as their
    access-log lines and X-Request-ID do, so that an operator can join the two (it named none)."""
    import logging
    import socket

    import numpy as np
    import tritonclient.grpc as tg
    from starlette.testclient import TestClient
    from tritonclient.utils import InferenceServerException

    from service.app import create_app
    from service.runners import SentimentRunner
    from service.settings import Settings
    from tests.conftest import COMMITTED_MODELS

    def broken(self: object, batch: object) -> object:
        raise RuntimeError("planted model fault")

    monkeypatch.setattr(SentimentRunner, "run", broken)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        grpc_port = s.getsockname()[1]
    app = create_app(Settings(model_repository=COMMITTED_MODELS, warmup=False, grpc_port=grpc_port))
    with caplog.at_level(logging.ERROR, "seqserve.batching"), TestClient(app) as client:
        r = client.post("/v1/sentiment", json={"text": "fine"}, headers={"X-Request-ID": "http-7"})
        assert r.status_code == 500 and r.json()["code"] == "inference_failed"
        grpc_client = tg.InferenceServerClient(url=f"127.0.0.1:{grpc_port}")
        text = tg.InferInput("text", [1, 1], "BYTES")
        text.set_data_from_numpy(np.array([[b"fine"]], dtype=np.object_))
        try:
            grpc_client.infer("sentiment", [text], request_id="grpc-8")
        except InferenceServerException as exc:
            assert "planted model fault" in str(exc)
        else:
            raise AssertionError("the planted fault did not fail the call")
        grpc_client.close()
    failed = [r.getMessage() for r in caplog.records if "failed on model sentiment" in r.getMessage()]
    assert any("(requests http-7)" in m for m in failed) and any("(requests grpc-8)" in m for m in failed), failed
