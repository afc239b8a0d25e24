"""The service's own log on stderr (uvicorn's included): text lines, or one JSON object per line,
through service/log_sink.py (a stalled log reader never blocks the thread that logs).

The access log is JSON lines of its own (service/access_log.py). With ``SEQSERVE_LOG_FORMAT=json``
the rest of stderr is JSON lines too, with the access log's first fields (``time`` in UTC,
``level``, ``logger``, ``pid``), then ``message`` and, for an error with a traceback, ``exception``
(the whole traceback in one string): a log pipeline parses every line, and an ERROR line or the
shutdown's summary is not lost among lines it cannot read. Text lines carry the same fields:
uvicorn's lines go through the same handler, not uvicorn's own format, so each says which process
wrote it (several workers share stderr).
"""

from __future__ import annotations

import logging
import time

# nothing here may import prometheus-client (service.metrics, service.access_log): a supervisor
# configures logging before it sets PROMETHEUS_MULTIPROC_DIR, which must come first
from service import log_sink
from service.json_response import dumps
from service.settings import Settings

_stamp: tuple[int, str] = (-1, "")  # the last second formatted (one tuple: threads read it whole)


def utc_time(now: float) -> str:
    """``now`` (time.time()) as UTC with milliseconds, "2026-12-01T19:42:05.012Z", the second's text
    formatted once per second (``strftime`` per line was a measurable share of the loop's time)."""
    global _stamp
    second = int(now)
    if _stamp[0] != second:
        _stamp = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{_stamp[1]}.{int((now - second) * 1000):03d}Z"


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": utc_time(record.created), "level": record.levelname, "logger": record.name,
                 "pid": record.process, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return dumps(entry).decode()


class ToStderr(logging.Handler):
    """Formatted records to stderr through service/log_sink.py: a log reader that stalls never
    blocks the thread that logs, the event loop or the supervisor's watchdog."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            log_sink.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def configure_logging(settings: Settings) -> None:
    """The root logger's one handler on stderr, which uvicorn's loggers reach too (the server runs
    uvicorn with ``log_config=None``, so they keep no handler of their own)."""
    handler = ToStderr()
    if settings.log_format == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(name)s %(message)s"))
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler], force=True)
