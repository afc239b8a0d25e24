"""service/server.py: the access log's lines of one event-loop pass are written together."""

from __future__ import annotations

import asyncio
import io
import json
import logging

from service.server import AccessLogFormatter, LoopPassStreamHandler


class _Counting(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def _logger(stream: _Counting) -> tuple[logging.Logger, LoopPassStreamHandler]:
    handler = LoopPassStreamHandler()
    handler.setStream(stream)  # type: ignore[arg-type]
    handler.setFormatter(AccessLogFormatter())
    logger = logging.getLogger("test.access.pass")
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.INFO)
    return logger, handler


async def test_lines_of_one_loop_pass_go_out_in_one_write_after_it() -> None:
    stream = _Counting()
    logger, _ = _logger(stream)
    for i in range(5):
        logger.info("request", extra={"access": {"request_id": str(i), "status": 200}})
    assert stream.writes == 0  # not yet: the pass is not over
    await asyncio.sleep(0)
    lines = stream.getvalue().splitlines()
    assert stream.writes == 1 and [json.loads(line)["request_id"] for line in lines] == ["0", "1", "2", "3", "4"]


def test_lines_off_the_event_loop_and_pending_ones_at_close_are_written() -> None:
    stream = _Counting()
    logger, handler = _logger(stream)
    logger.info("request", extra={"access": {"request_id": "a"}})  # no running loop: at once
    assert json.loads(stream.getvalue())["request_id"] == "a"

    async def log_then_exit() -> None:
        logger.info("request", extra={"access": {"request_id": "b"}})
        assert stream.getvalue().count("\n") == 1  # waiting for the end of the pass
        handler.close()  # what logging.shutdown does at exit, before that pass comes

    asyncio.run(log_then_exit())
    assert [json.loads(line)["request_id"] for line in stream.getvalue().splitlines()] == ["a", "b"]
