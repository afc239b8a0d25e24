"""The access log: one JSON object per answered request, on stderr; and the request ids.

Each line holds the time (UTC, milliseconds), level, logger and process id, then the request's
own fields:

    {"time":"2026-12-01T19:42:05.012Z","level":"INFO","logger":"seqserve.access","pid":5785,
     "request_id":"...","method":"POST","path":"/v1/sentiment","route":"/v1/sentiment",
     "status":200,"latency_ms":12.3}

It is written here, with the standard library, rather than through ``logging``: a record, its
handler's lock and its formatter cost the event loop 37 us per line in a tight loop and 62-70 us
inside the app (a LogRecord per request, ``strftime`` per line). This costs 12-18 us with
``json.dumps``, ~6 us less with the API's own JSON encoder (service/json_response.py); a line
with non-ASCII characters (only a path can bring them) is written ASCII-escaped by ``json.dumps``.
The time string is formatted once per second.

The lines logged during one pass of the event loop go out together when the pass is over, through
service/log_sink.py (a stalled log reader never stalls the server). Lines logged off the event
loop go at once, and pending ones at exit.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import itertools
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from contextvars import ContextVar
from typing import Any, TextIO

from service import log_sink, metrics
from service.json_response import dumps
from service.logs import utc_time


class AccessLog:
    def __init__(self, stream: TextIO | None = None, logger: str = "seqserve.access") -> None:
        self._stream = stream  # None: stderr (service/log_sink.py)
        self._logger = logger
        self._lines: list[str] = []
        self._lock = threading.Lock()  # between the loop's pass-end write and writes off the loop
        # the event loop last written from, and its thread (one tuple: threads read it whole)
        self._last_loop: tuple[asyncio.AbstractEventLoop | None, int] = (None, 0)

    def write(self, fields: dict[str, Any]) -> None:
        """Log one request's ``fields`` (JSON-serialisable), after the time, level, logger and pid."""
        now = time.time()
        # the ones every line has are written as text (none needs escaping), then the request's own
        own = dumps(fields).decode()
        line = f'{{"time":"{utc_time(now)}","level":"INFO","logger":"{self._logger}","pid":{_pid}' \
            + ("," + own[1:] if fields else "}")
        if not line.isascii():
            # a path with non-ASCII characters (percent-decoded): escaped, so that the line stays one
            # line for readers that also split at U+2028/U+2029/U+0085 (str.splitlines, log
            # shippers) and valid JSON on a stderr that is not UTF-8
            line = json.dumps({"time": utc_time(now), "level": "INFO", "logger": self._logger, "pid": _pid, **fields},
                              separators=(",", ":"))
        loop = self._running_loop()
        if loop is None:  # not on the event loop: no pass to wait for
            self._write(line)
            return
        self._lines.append(line)
        if len(self._lines) == 1:
            loop.call_soon(self.flush)

    def _running_loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop running on this thread, if any. The last one is remembered with its
        thread: on Python 3.11 ``asyncio.get_running_loop`` makes a system call (getpid) each time."""
        loop, thread = self._last_loop
        if loop is not None and thread == threading.get_ident() and loop.is_running():
            return loop
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        self._last_loop = (loop, threading.get_ident())
        return loop

    def flush(self) -> None:
        """Write the pending lines now (at the end of a loop pass, and at exit)."""
        lines, self._lines = self._lines, []
        if lines:
            self._write("\n".join(lines))

    def _write(self, text: str) -> None:
        if self._stream is None:  # stderr, through its writer thread: never blocks on the reader
            log_sink.stderr.write(text + "\n")
            return
        with self._lock:
            self._stream.write(text + "\n")
            self._stream.flush()


def _remember_pid() -> None:
    global _pid
    _pid = os.getpid()


# the process id every line carries: read once, and again in a forked child (a system call each time)
_pid = os.getpid()
os.register_at_fork(after_in_child=_remember_pid)
access_log = AccessLog()
atexit.register(access_log.flush)


_LOGGED_PATH = 1024  # characters of a path kept in its access-log line
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
# unique per process and cheap: a random prefix and a counter (no syscall per request)
_ID_PREFIX = uuid.uuid4().hex[:16]
_id_counter = itertools.count(1)


# The id of the request being served in this task (set where HTTP and gRPC requests start, read by
# what a request queues: service/admission.py), so that a log line about a batch or a thread that
# failed names the requests it failed, as their access-log lines and X-Request-ID do.
CURRENT_REQUEST_ID: ContextVar[str] = ContextVar("seqserve_request_id", default="")
_NAMED_IDS = 16  # request ids a log line names before it only counts the rest


def named_ids(ids: Iterable[str]) -> str:
    """Request ids for a log line: each once, in order, at most ``_NAMED_IDS`` of them."""
    unique = [i for i in dict.fromkeys(ids) if i]
    more = f" and {len(unique) - _NAMED_IDS} more" if len(unique) > _NAMED_IDS else ""
    return (", ".join(unique[:_NAMED_IDS]) or "none known") + more


class AnswerWithId:
    """A request's answer as its layers send it (``send``): its head gets the request's
    X-Request-ID, and its status is noted for the log line (500 until an answer starts: a fault)."""

    __slots__ = ("_send", "request_id", "started", "status")

    def __init__(self, send: Callable[[MutableMapping[str, Any]], Awaitable[None]], request_id: str) -> None:
        self._send, self.request_id = send, request_id
        self.status, self.started = 500, False

    async def send(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.started, self.status = True, message["status"]
            message["headers"] = [*message.get("headers", []), (b"x-request-id", self.request_id.encode())]
        await self._send(message)


def request_context(request_id: str) -> contextvars.Context:
    """A context in which log lines name ``request_id``: for a task that answers a request outside
    the request middleware, which sets it for the app's."""
    context = contextvars.copy_context()
    context.run(CURRENT_REQUEST_ID.set, request_id)
    return context


def request_id_for(incoming: bytes | None) -> str:
    """The client's X-Request-ID if sane, else a new id unique in this process."""
    text = incoming.decode("latin-1") if incoming else ""
    return text if text and _SANE_ID.match(text) else _new_id()


def _new_id() -> str:
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


def request_id_of(headers: Mapping[bytes, bytes], own_id: bytes = b"") -> str:
    """A request's id, for HTTP headers and gRPC metadata alike: X-Request-ID if sane (a proxy's
    wins), else a W3C ``traceparent`` (what an OpenTelemetry client sends: the log line then names
    the trace and the caller's span), else ``own_id`` (an inference request's ``id``) if sane, else
    a new one."""
    given = headers.get(b"x-request-id")
    if given is None and not own_id and b"traceparent" not in headers:
        return _new_id()  # none given: most requests
    if given is None or _SANE_ID.match(given.decode("latin-1")) is None:
        parent = headers.get(b"traceparent")
        given = parent if parent is not None and _TRACEPARENT.match(parent.decode("latin-1")) else own_id
    return request_id_for(given)


def record_request(method: str | None, path: str | None, route: str, status: int, seconds: float, request_id: str,
                   log_requests: bool) -> None:
    """Count one answered request in the metrics and write its access-log line (``method`` and
    ``path`` None for bytes that never parsed as far as a request line)."""
    metrics.request_done(route, status, seconds)
    if path is not None and len(path) > _LOGGED_PATH:  # a line must stay whole for log shippers (Docker: 16 KiB)
        path = f"{path[:_LOGGED_PATH]}... ({len(path)} characters)"
    if log_requests:
        access_log.write({"request_id": request_id, "method": method, "path": path, "route": route,
                          "status": status, "latency_ms": round(seconds * 1000, 2)})
