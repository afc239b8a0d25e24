"""The event loop's own CPU per sentiment request, without HTTP, a load generator or their noise.

    python -m loadtests.loop_cost [--model real|instant] [--sleep-us 0] [--clients 64] [--requests 8000]
                                  [--rounds 5] [--garbage] [--layers] [--via asgi|protocol]

Builds the service's app with the models in models/ and the access log on (its lines go to
/dev/null), starts it (the lifespan: models, worker threads, warm-up) and calls it over ASGI, in
this process, from ``--clients`` concurrent callers that each post SST-2 test sentences to
/v1/sentiment one after another. Every layer from the request middleware to the answer runs, the
batcher and its worker threads included; uvicorn's parsing and the socket writes do not (a bare
uvicorn app costs ~40 us a request on the 2-core VMs).

Per round it prints requests/s, the event loop thread's CPU a request (``time.thread_time``) and
the process's (``getrusage``). ``--model instant`` has the classifier's worker answer at once, so
the loop is all that costs: requests/s is then the serving path's own limit on one core.
``--sleep-us N`` has it sleep N us a text first: the model's pace without its CPU or its caches
(2-core VM, stop 52: the loop then costs as much a request as with the real model, ~115-132 us
against ~73 answered at once: what the loop pays for running a few requests a pass).
``--garbage`` counts the objects each request leaves for the garbage collector (``gc.DEBUG_SAVEALL``
over a round): 0 when reference counting frees every request.

``--via protocol`` sends each request's bytes to the server's HTTP protocol instead
(service/http_protocol.py, a connection per caller, its writes kept in memory): uvicorn's parsing,
the direct route (service/direct_route.py) and the answer's bytes run too, only the sockets'
system calls do not.

``--layers`` says what each layer of the app costs. The rounds take turns entering the app at each
layer of its middleware stack, from the outermost (FastAPI itself) down to the inference routes'
direct path (service/hot_routes.py), and once more whole with the access log off; each layer's
cost is the event loop's CPU a request entering above it less entering below it (medians, same
process, alternating rounds: the VM's drift is shared). An inner entry skips what the layers
above it do for the request (request id, access log, metrics, body checks): it measures, it
does not serve.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import resource
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI
from starlette.types import ASGIApp

from loadtests.http_client import encode_post
from loadtests.inputs import DATA_DIR, sentiment_texts
from loadtests.server import ROOT
from service.app import create_app
from service.hot_routes import HotRouteMiddleware
from service.http_protocol import ARRIVAL, ArrivalStampingProtocol
from service.middleware import RequestContextMiddleware
from service.runners import SentimentRunner
from service.server import uvicorn_config
from service.settings import Settings

PATH = "/v1/sentiment"


@contextlib.contextmanager
def stderr_to_null() -> Iterator[None]:
    """The access log's lines (and the server's own) off the terminal while the rounds run."""
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(null)
        os.close(saved)


def request(body: bytes) -> tuple[dict[str, Any], Any, Any, list[int]]:
    """One POST as uvicorn hands it to the app (scope, receive, send), stamped as arriving now, and
    the list its answer's status lands in."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": PATH, "raw_path": PATH.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000), "state": {},
             "extensions": {ARRIVAL: {"at": time.perf_counter()}}}
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # the client stays: no disconnect
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    return scope, receive, send, status


class Connection(asyncio.Transport):
    """A caller's connection as the server's protocol sees it: what it writes is kept, and the
    caller is woken when an answer is complete."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class AnsweringProtocol(ArrivalStampingProtocol):
    """The server's protocol, telling its caller when an answer is complete."""

    answered: asyncio.Future[None] | None = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.answered is not None and not self.answered.done():
            self.answered.set_result(None)


def connect(app: FastAPI, settings: Settings) -> tuple[AnsweringProtocol, Connection]:
    """A connection to ``app`` through the server's protocol, configured as the server runs it."""
    from uvicorn.server import ServerState

    config = uvicorn_config(app, settings, AnsweringProtocol)
    config.load()
    protocol = AnsweringProtocol(config=config, server_state=ServerState(), app_state={})
    connection = Connection()
    protocol.connection_made(connection)
    return protocol, connection


def answer_at_once(runner: SentimentRunner, sleep_s: float = 0.0) -> None:
    """The classifier's worker answers every batch at once (the same answer for each text), or
    after sleeping ``sleep_s`` a text: as long as a model run, without its CPU or its caches."""
    answer = np.array([[0.25, 0.75]], dtype=np.float32)

    def run(batch: Sequence[Sequence[int]]) -> np.ndarray:
        if sleep_s:
            time.sleep(sleep_s * len(batch))
        return np.repeat(answer, len(batch), axis=0)

    runner.run = run  # type: ignore[method-assign]


@dataclass
class Entry:
    """Where a round calls the app: ``layer`` (the app, or one of its middleware), and whether the
    access log writes its lines meanwhile."""

    name: str
    layer: ASGIApp
    access_log: bool = True


def middleware(app: FastAPI) -> list[ASGIApp]:
    """The app's middleware stack (built by its first request), outermost first, down to the
    inference routes' direct path."""
    stack: list[ASGIApp] = []
    layer = app.middleware_stack
    while layer is not None and not isinstance(layer, HotRouteMiddleware):
        stack.append(layer)
        layer = getattr(layer, "app", None)
    return [*stack, layer] if layer is not None else stack


def entries(app: FastAPI, layers: bool) -> list[Entry]:
    """The whole app; with ``layers``, also each layer of its middleware stack down to the
    inference routes' direct path, and the whole app with the access log off."""
    if not layers:
        return [Entry("app", app)]
    return [Entry("app", app), *(Entry(type(layer).__name__, layer) for layer in middleware(app)),
            Entry("app, access log off", app, access_log=False)]


async def rounds(args: argparse.Namespace) -> tuple[list[dict[str, float]], dict[int, int], list[str]]:
    """Each round's figures, the statuses of every answer in them, and each round's entry."""
    settings = Settings(model_repository=args.models, grpc_port=0, access_log=True)
    app = create_app(settings)
    texts = sentiment_texts(args.data_dir, "test")
    bodies = [json.dumps({"text": t}).encode() for t in texts]
    statuses: dict[int, int] = {}
    entry = Entry("app", app)

    async def caller(first: int, count: int) -> None:
        if args.via == "protocol":
            await protocol_caller(first, count)
            return
        for i in range(first, count, args.clients):
            scope, receive, send, status = request(bodies[i % len(bodies)])
            scope["app"] = app  # what Starlette sets on the way in (an inner entry skips it)
            await entry.layer(scope, receive, send)
            statuses[status[0]] = statuses.get(status[0], 0) + 1

    raw = [encode_post(PATH, {"text": t}) for t in texts]  # the same requests, as a client sends them
    connections: dict[int, tuple[AnsweringProtocol, Connection]] = {}

    async def protocol_caller(first: int, count: int) -> None:
        if first not in connections:
            connections[first] = connect(app, settings)
        protocol, connection = connections[first]
        loop = asyncio.get_running_loop()
        for i in range(first, count, args.clients):
            protocol.answered = loop.create_future()
            protocol.data_received(raw[i % len(raw)])
            await protocol.answered
            status = int(connection.written[9:12])
            statuses[status] = statuses.get(status, 0) + 1
            connection.written.clear()

    async def one_round(count: int) -> None:
        await asyncio.gather(*(caller(k, count) for k in range(args.clients)))

    results: list[dict[str, float]] = []
    async with app.router.lifespan_context(app):
        if args.model == "instant":
            runner = app.state.registry.for_task("text-classification").runner
            assert isinstance(runner, SentimentRunner)
            answer_at_once(runner, args.sleep_us / 1e6)
        await one_round(min(args.requests, 2000))  # warm: first calls, caches (and builds the stack)
        statuses.clear()
        turns = entries(app, args.layers)
        # where the access log is turned off for a round (--layers): the app's request middleware
        contexts = [layer for layer in middleware(app) if isinstance(layer, RequestContextMiddleware)]
        names: list[str] = []
        for k in range(args.rounds * len(turns)):
            entry = turns[k % len(turns)]
            for context in contexts:
                context.log_requests = entry.access_log
            names.append(entry.name)
            if args.garbage:
                gc.collect()
                gc.set_debug(gc.DEBUG_SAVEALL)
            wall, loop = time.perf_counter(), time.thread_time()
            usage = resource.getrusage(resource.RUSAGE_SELF)
            await one_round(args.requests)
            after = resource.getrusage(resource.RUSAGE_SELF)
            wall, loop = time.perf_counter() - wall, time.thread_time() - loop
            process = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
            row = {"rps": args.requests / wall, "loop_us": loop / args.requests * 1e6,
                   "process_us": process / args.requests * 1e6}
            if args.garbage:
                gc.collect()
                row["garbage"] = len(gc.garbage) / args.requests
                gc.set_debug(0)
                gc.garbage.clear()
            results.append(row)
        for context in contexts:
            context.log_requests = settings.access_log
    return results, statuses, names


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("real", "instant"), default="real")
    p.add_argument("--sleep-us", type=float, default=0.0,
                   help="with --model instant: the model thread sleeps this long a text before it answers "
                        "(a run's length without its CPU: whether the loop's cost is the model's doing)")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--requests", type=int, default=8000, help="a round's")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--garbage", action="store_true", help="count what each request leaves for the garbage collector")
    p.add_argument("--layers", action="store_true", help="what each layer of the app costs (--rounds per layer)")
    p.add_argument("--via", choices=("asgi", "protocol"), default="asgi",
                   help="call the app over ASGI, or send the requests' bytes to the server's protocol")
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    args = p.parse_args(argv)
    if args.layers and args.via == "protocol":
        p.error("--layers enters the app at its middleware layers: over ASGI only")
    if args.sleep_us and args.model != "instant":
        p.error("--sleep-us stands in for the model: with --model instant only")
    import uvloop  # the server's loop (uvicorn's loop="auto" takes it where installed)

    with stderr_to_null():
        results, statuses, names = uvloop.run(rounds(args))
    model = f"instant model sleeping {args.sleep_us:g} us a text" if args.sleep_us else f"{args.model} model"
    print(f"{PATH} in process via {args.via}, {args.clients} callers, {model}, "
          f"{args.requests} requests a round; statuses {statuses}")
    for i, (row, name) in enumerate(zip(results, names, strict=True), 1):
        garbage = f", garbage {row['garbage']:.1f} objects a request" if "garbage" in row else ""
        entered = f" ({name})" if args.layers else ""
        print(f"round {i}{entered}: {row['rps']:8.1f} req/s, event loop {row['loop_us']:5.0f} us, "
              f"process {row['process_us']:5.0f} us a request{garbage}")
    if args.layers:
        print_layers(results, names)
        return
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    garbage = f", garbage {med['garbage']:.1f} objects a request" if "garbage" in med else ""
    print(f"median: {med['rps']:.1f} req/s, event loop {med['loop_us']:.0f} us, process {med['process_us']:.0f} us "
          f"a request{garbage}")


def print_layers(results: list[dict[str, float]], names: list[str]) -> None:
    """Per entry, the median event loop CPU a request, and what the layer entered there costs
    (this entry's less the next one's); the access log's line is the whole app's less its own."""
    loop_us = {name: statistics.median(r["loop_us"] for r, n in zip(results, names, strict=True) if n == name)
               for name in dict.fromkeys(names)}
    layers = [n for n in loop_us if n != "app, access log off"]
    print("| entered at | event loop a request | the layer's own |\n|---|---:|---:|")
    for name, below in zip(layers, [*layers[1:], None], strict=True):
        own = f"{loop_us[name] - loop_us[below]:.0f} us" if below is not None else "(the route and below)"
        print(f"| {name} | {loop_us[name]:.0f} us | {own} |")
    print(f"the access log's line: {loop_us['app'] - loop_us['app, access log off']:.0f} us a request "
          f"(the whole app, {loop_us['app']:.0f} against {loop_us['app, access log off']:.0f} us with it off)")


if __name__ == "__main__":
    main()
