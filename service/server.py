"""One server process: the app under uvicorn, configured by SEQSERVE_* settings.

SIGTERM/SIGINT start a graceful shutdown: readiness turns 503, the listening socket closes,
accepted requests finish (up to SEQSERVE_DRAIN_TIMEOUT_S), then the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from multiprocessing.synchronize import Event
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from service.settings import Settings

STARTUP_FAILED = 3  # exit code when the app refused to start (a model did not load, the port is taken)

if TYPE_CHECKING:
    from fastapi import FastAPI


def _count_as_serving(serving: bool) -> None:
    """seqserve_workers_serving is summed over workers: it shows when all of them accept requests."""
    from service.metrics import WORKERS_SERVING  # imported late: see serve()

    WORKERS_SERVING.set(1 if serving else 0)


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, started: Event | None = None) -> None:
        super().__init__(config)
        self.app = app
        self.started_event = started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            _count_as_serving(True)
            if self.started_event is not None:
                self.started_event.set()  # tells a supervisor that this worker serves

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # readiness turns 503 at once, so balancers stop sending while accepted work drains
        self.app.state.ready = False
        self.app.state.early_refusal.close()
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # here, not in handle_exit: a signal handler must not take prometheus-client's value lock
        _count_as_serving(False)
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises the captured signal after its graceful shutdown, which makes a clean,
        # drained stop exit with -15; orchestrators read that as a crash. Handle it, exit 0.
        # Under a supervisor Ctrl+C reaches the whole process group, and the supervisor's SIGTERM
        # would then be a second signal, which uvicorn takes as "stop draining": the worker leaves
        # SIGINT to the supervisor.
        supervised = self.started_event is not None
        originals = {signal.SIGTERM: signal.signal(signal.SIGTERM, self.handle_exit),
                     signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN if supervised else self.handle_exit)}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)


_M_ARENA_MAX = -8  # glibc mallopt parameter


def limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives threads their own malloc arenas; with several threads allocating batch-sized
    arrays, freed memory stays fragmented across them and RSS creeps up burst after burst
    (measured with 10 overload bursts: 256 -> 342 MB; with 2 arenas a flat 228-274 MB band).
    Set before any worker thread starts; an operator's MALLOC_ARENA_MAX wins; no-op off glibc."""
    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, arenas)


class AccessLogFormatter(logging.Formatter):
    """The access log as one JSON object per line (for log shippers): the request's fields
    (``extra={"access": {...}}``) with the time (UTC), level, logger and process id."""

    converter = time.gmtime  # type: ignore[assignment]  # typeshed types gmtime without its argument

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "access", None) or {"message": record.getMessage()}
        return json.dumps({"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
                           "level": record.levelname, "logger": record.name, "pid": record.process, **fields})


class LoopPassStreamHandler(logging.StreamHandler):
    """A stream handler that writes the lines logged during one pass of the event loop together,
    in one write when the pass is over, instead of a write (a syscall) per request: under load the
    access log's line cost the loop ~55-140 us per request, several times its formatting alone
    (loadtests/cpu_share.py). Lines logged off the event loop are written at once; pending lines
    are written when logging shuts down (at exit)."""

    def __init__(self) -> None:
        super().__init__()
        self._lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on the event loop: no pass to wait for
            super().emit(record)
            return
        try:
            self._lines.append(self.format(record))
        except Exception:
            self.handleError(record)
            return
        if len(self._lines) == 1:
            loop.call_soon(self.write_pending)

    def write_pending(self) -> None:
        lines, self._lines = self._lines, []
        if lines:
            with self.lock:  # type: ignore[union-attr]
                self.stream.write("\n".join(lines) + "\n")
                self.flush()

    def close(self) -> None:
        self.write_pending()
        super().close()


def configure_logging(settings: Settings) -> None:
    """Plain lines for the service's own log, the access log as JSON lines. Neither format shows
    the caller's file and line or the thread's and process's names, so log records skip looking
    them up (the logging HOWTO's "Optimization" switches): 28 -> 18 us per access-log line."""
    logging._srcfile = None  # a documented switch (the HOWTO): no caller lookup
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s [%(process)d] %(name)s %(message)s")
    handler = LoopPassStreamHandler()
    handler.setFormatter(AccessLogFormatter())
    access = logging.getLogger("seqserve.access")
    access.handlers = [handler]
    access.propagate = False


def serve(sock: socket.socket | None = None, started: Event | None = None) -> None:
    """The whole app on its own event loop until SIGTERM/SIGINT. A supervisor passes the socket
    it bound for several of these and an event to set once serving. Exits STARTUP_FAILED if the
    app refused to start."""
    # the app (FastAPI, prometheus-client, ONNX Runtime) is imported here, not at module level:
    # a supervisor must set PROMETHEUS_MULTIPROC_DIR before prometheus-client is first imported
    from service.app import create_app
    from service.http_protocol import ArrivalStampingProtocol

    limit_malloc_arenas()
    settings = Settings()
    configure_logging(settings)
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port,
                            log_level=settings.log_level, access_log=False,
                            http=ArrivalStampingProtocol,  # latency from arrival (service/http_protocol.py)
                            # seqserve never reads the client address: skip uvicorn's X-Forwarded-For layer
                            proxy_headers=False,
                            timeout_graceful_shutdown=int(settings.drain_timeout_s) + 1)
    server = _Server(config, app, started)
    server.run(sockets=[sock] if sock else None)
    if not server.started:  # start-up failed (e.g. a model refused to load): say so in the exit code
        sys.exit(STARTUP_FAILED)
