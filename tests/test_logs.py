"""service/logs.py: the service's own log, text or JSON lines, uvicorn's included."""

from __future__ import annotations

import json
import logging
import socket

import httpx

from service.logs import JsonLines
from tests.conftest import COMMITTED_MODELS, Server


def test_a_json_line_has_the_access_logs_first_fields_and_the_traceback_in_one_string() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("seqserve").makeRecord("seqserve", logging.ERROR, __file__, 1, "failed %s", ("x",),
                                                          exc_info=__import__("sys").exc_info())
    entry = json.loads(JsonLines().format(record))
    assert list(entry)[:5] == ["time", "level", "logger", "pid", "message"] and entry["time"].endswith("Z")
    assert entry["message"] == "failed x" and entry["level"] == "ERROR" and "ValueError: boom" in entry["exception"]


def test_with_log_format_json_every_line_on_stderr_is_json() -> None:
    """uvicorn's lines ("INFO:     Started server process"), the service's ("2026-12-02 08:28:21,509
    INFO ...", local time) and the access log's JSON were three formats on one stderr: a log
    pipeline dropped all but one, the shutdown's summary and ERROR lines included."""
    server = Server(COMMITTED_MODELS, warmup="false", access_log="true", log_format="JSON").wait_ready()
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GARBAGE\r\n\r\n")  # uvicorn warned about it in a line of its own
        sock.recv(4096)
    assert server.stop() == 0
    entries = [json.loads(line) for line in server.output().splitlines()]
    messages = {e["message"] for e in entries if "message" in e}
    assert "Application startup complete." in messages and "shutdown: all accepted work finished" in messages
    assert not any("Invalid HTTP request" in m for m in messages)
    assert {e["logger"] for e in entries} >= {"uvicorn.error", "seqserve", "seqserve.access"}


def test_text_lines_say_which_process_wrote_them() -> None:
    server = Server(COMMITTED_MODELS, warmup="false").wait_ready()
    assert server.stop() == 0
    pid = server.proc.pid
    assert f"INFO [{pid}] uvicorn.error Application startup complete." in server.output()
