"""One server process: the app under uvicorn, configured by SEQSERVE_* settings.

SIGTERM/SIGINT start a graceful shutdown: readiness turns 503, the listening socket closes,
accepted requests finish (HTTP, gRPC and the models together, up to SEQSERVE_DRAIN_TIMEOUT_S:
service/drain.py), then the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
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

from service.logs import configure_logging
from service.settings import Settings

STARTUP_FAILED = 3  # exit code when the app refused to start (a model did not load, the port is taken)
HEARTBEAT_INTERVAL_S = 1.0  # how often a supervised worker's event loop tells its supervisor that it runs

if TYPE_CHECKING:
    from fastapi import FastAPI

    from service.http_protocol import ArrivalStampingProtocol


def _count_as_serving(serving: bool) -> None:
    """seqserve_workers_serving is summed over workers: it shows when all of them accept requests."""
    from service.metrics import WORKERS_SERVING  # imported late: see serve()

    WORKERS_SERVING.set(1 if serving else 0)


async def _beat(heartbeat: ctypes.c_uint64) -> None:
    """Counts up while this process's event loop runs: a supervisor kills and replaces a worker
    whose count stops (service/workers.py), as one stopped or deadlocked would never answer."""
    while True:
        heartbeat.value += 1
        await asyncio.sleep(HEARTBEAT_INTERVAL_S)


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, started: Event | None = None,
                 heartbeat: ctypes.c_uint64 | None = None) -> None:
        super().__init__(config)
        self.app = app
        self.started_event = started
        self.heartbeat = heartbeat
        self.beating: asyncio.Task[None] | None = None

    @property
    def supervised(self) -> bool:
        """One of a supervisor's workers (it passed the event to set once serving)."""
        return self.started_event is not None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()  # a second signal's cut reaches the drain through it
        await super().startup(sockets)
        if self.started:
            _count_as_serving(True)
            if self.heartbeat is not None:  # it beats through the drain too: a drain is no hang
                self.heartbeat.value += 1  # before "serving": the supervisor never sees a worker serve unbeaten
                self.beating = asyncio.create_task(_beat(self.heartbeat))
            if self.started_event is not None:
                self.started_event.set()  # tells a supervisor that this worker serves

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # readiness turns 503 at once, so balancers stop sending while accepted work drains
        self.app.state.ready = False
        self.app.state.early_refusal.close()
        if self.should_exit and (sig == signal.SIGINT or (self.supervised and sig == signal.SIGTERM)):
            # a second Ctrl+C (under a supervisor, which passes it on, a second SIGTERM): uvicorn's
            # force quit. What is in flight is cut off now, HTTP, gRPC and the models alike, and
            # answered as at the drain's deadline (503 JSON, UNAVAILABLE, counted in the shutdown's
            # line), not with a text/plain 500 and a traceback
            self.app.state.drain.cut_short = True
            self.force_exit = True
            self.loop.call_soon_threadsafe(self.app.state.drain.cut_now)
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # the drain's one deadline is fixed now and gRPC stops from now, while uvicorn waits for
        # HTTP (service/drain.py). Not once start-up failed: the lifespan has nothing to drain then
        if self.started:
            self.app.state.drain.start()
            await self._take_waiting_connections()
        # here, not in handle_exit: a signal handler must not take prometheus-client's value lock
        _count_as_serving(False)
        await super().shutdown(sockets)

    async def _take_waiting_connections(self) -> None:
        """Connections the kernel accepted that the event loop had not yet taken from the listening
        socket, their requests sent before the signal: closing the socket reset them, unanswered
        and unlogged (a busy loop left ~50 of 100 there). Taken now, as the loop would have, so
        that uvicorn's shutdown finds them and their requests are served (service/http_protocol.py
        reads what they sent)."""
        loop = asyncio.get_running_loop()

        def protocol() -> asyncio.Protocol:  # as uvicorn's startup makes one
            return self.config.http_protocol_class(config=self.config, server_state=self.server_state,  # type: ignore[call-arg]
                                                   app_state=self.lifespan.state, _loop=loop)

        for server in self.servers:
            for listener in server.sockets:
                with socket.socket(fileno=os.dup(listener.fileno())) as waiting:  # non-blocking, as the loop's
                    for _ in range(self.config.backlog):
                        try:
                            connection, _ = waiting.accept()
                        except (BlockingIOError, InterruptedError):
                            break
                        await loop.connect_accepted_socket(protocol, connection, ssl=self.config.ssl)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises the captured signal after its graceful shutdown, which makes a clean,
        # drained stop exit with -15; orchestrators read that as a crash. Handle it, exit 0.
        # Under a supervisor Ctrl+C reaches the whole process group, and the supervisor's SIGTERM
        # would then be a second signal, which uvicorn takes as "stop draining": the worker leaves
        # SIGINT to the supervisor.
        # SIGHUP (a closed terminal, `kill -HUP`, systemd's ExecReload) is a graceful stop too: its
        # default killed the server with no drain, and a supervisor with no word to its workers.
        own = signal.SIG_IGN if self.supervised else self.handle_exit
        originals = {signal.SIGTERM: signal.signal(signal.SIGTERM, self.handle_exit),
                     signal.SIGINT: signal.signal(signal.SIGINT, own),
                     signal.SIGHUP: signal.signal(signal.SIGHUP, own)}
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


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def ports_free(settings: Settings, http: bool) -> bool:
    """Whether the gRPC port, and with ``http`` the HTTP one, can be bound; a taken one is logged in
    one line. A port in use is said before the models load, not after "ready": a trial bind,
    closed at once (uvicorn binds as it always has: "localhost" on IPv4 and IPv6, "::" IPv6 only;
    gRPC's taken was a 30-line traceback of the lifespan after the models loaded). The trial
    socket has no SO_REUSEPORT, so it fails on a port that another server's workers share with
    it: a supervisor asks before its workers bind the gRPC port with it, or a second deployment
    beside one with workers would share the port and take half of its gRPC calls."""
    for port, what in ((settings.port if http else 0, ""), (settings.grpc_port, " (gRPC, SEQSERVE_GRPC_PORT)")):
        if not port:
            continue
        try:
            bind_socket(settings.host, port).close()
        except OSError as exc:
            logging.getLogger("seqserve").error("cannot listen on %s:%d%s: %s", settings.host, port, what, exc)
            return False
    return True


def uvicorn_config(app: FastAPI, settings: Settings, http: type[ArrivalStampingProtocol]) -> uvicorn.Config:
    """How uvicorn runs ``app`` for the server; ``http``: the protocol of its connections,
    ArrivalStampingProtocol or a subclass (loadtests/loop_cost.py feeds one bytes in process)."""
    return uvicorn.Config(app, host=settings.host, port=settings.port,
                          log_level=settings.log_level, access_log=False,
                          log_config=None,  # uvicorn's lines go through the service's handler (service/logs.py)
                          http=http,  # latency from arrival (service/http_protocol.py)
                          # seqserve never reads the client address: skip uvicorn's X-Forwarded-For layer
                          proxy_headers=False,
                          # no route speaks WebSocket: an upgrade to it is declined as any other
                          # (service/http_protocol.py), not handed to a handshake that answers a bare 403
                          ws="none",
                          # no "server: uvicorn" on every answer: it tells a scanner what to try
                          server_header=False,
                          timeout_graceful_shutdown=int(settings.drain_timeout_s) + 1,
                          # uvicorn's 5 s: a proxy keeping idle upstream connections longer (nginx 60 s)
                          # reuses one as it closes, and its client gets a 502 the server never saw
                          timeout_keep_alive=settings.keep_alive_s)


def serve(sock: socket.socket | None = None, started: Event | None = None,
          heartbeat: ctypes.c_uint64 | None = None) -> None:
    """The whole app on its own event loop until SIGTERM/SIGINT. A supervisor passes the socket
    it bound for several of these, an event to set once serving and a shared counter for the event
    loop to count up while it runs. Exits STARTUP_FAILED if the app refused to start."""
    # the app (FastAPI, prometheus-client, ONNX Runtime) is imported here, not at module level:
    # a supervisor must set PROMETHEUS_MULTIPROC_DIR before prometheus-client is first imported
    from service.app import create_app, load_models
    from service.http_protocol import ArrivalStampingProtocol
    from service.onnx_session import ModelLoadError

    limit_malloc_arenas()
    settings = Settings()
    configure_logging(settings)
    if sock is None and not ports_free(settings, http=True):
        sys.exit(STARTUP_FAILED)
    loading_since = time.monotonic()
    try:
        registry = load_models(settings)  # before uvicorn: a refusal is its line, not the lifespan's traceback
    except ModelLoadError:
        sys.exit(STARTUP_FAILED)
    app = create_app(settings, registry, loading_since)
    config = uvicorn_config(app, settings, ArrivalStampingProtocol)
    server = _Server(config, app, started, heartbeat)
    server.run(sockets=[sock] if sock else None)
    if not server.started:  # start-up failed (e.g. a model refused to load): say so in the exit code
        sys.exit(STARTUP_FAILED)
