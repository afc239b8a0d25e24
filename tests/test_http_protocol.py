"""service/http_protocol.py: the server stamps a request's arrival when it parses it, and the
request layers count its latency from there."""

from __future__ import annotations

import asyncio
import gc
import json
import re
import socket
import time
import weakref
from collections.abc import Callable
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from loadtests.server import metric_value
from service.http_protocol import ARRIVAL, ArrivalStampingProtocol
from service.middleware import RequestContextMiddleware
from tests.conftest import Server


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False
        self.reading = True
        self.upgraded_to: asyncio.BaseProtocol | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.eof_written:  # as uvloop's
            raise RuntimeError("Cannot call write() after write_eof()")
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:  # a websocket upgrade
        self.upgraded_to = protocol

    def resume_reading(self) -> None:
        self.reading = True

    half_closes = False  # a transport that cannot close its sending side alone closes at once
    eof_written = False

    def can_write_eof(self) -> bool:
        return self.half_closes

    def write_eof(self) -> None:
        self.eof_written = True


async def test_the_arrival_is_stamped_when_the_request_is_parsed_not_when_the_app_runs() -> None:
    seen: dict[str, float] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen["app"], seen["arrived"] = time.perf_counter(), scope["extensions"][ARRIVAL]["at"]
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    config = Config(app=app, http=ArrivalStampingProtocol, log_level="warning")
    config.load()
    protocol = ArrivalStampingProtocol(config=config, server_state=ServerState(), app_state={})
    transport = _Transport()
    protocol.connection_made(transport)
    before = time.perf_counter()
    protocol.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    time.sleep(0.05)  # the event loop busy with other requests before this one's app runs
    for _ in range(100):
        if seen:
            break
        await asyncio.sleep(0.001)
    assert before <= seen["arrived"] <= before + 0.05 and seen["app"] - seen["arrived"] >= 0.05
    assert transport.written.startswith(b"HTTP/1.1 204")


async def test_the_access_log_counts_from_the_arrival(access_lines: Callable[[], list[dict[str, Any]]]) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        pass

    scope = {"type": "http", "method": "GET", "path": "/x", "headers": [],
             "extensions": {ARRIVAL: {"at": time.perf_counter() - 0.25}}}  # waited 250 ms before the app
    await RequestContextMiddleware(app, max_body_bytes=1024)(scope, receive, send)
    (entry,) = access_lines()
    assert entry["latency_ms"] >= 250


def test_a_deadline_counts_from_the_arrival() -> None:
    from starlette.requests import Request

    from service.inputs import deadline_for
    from service.settings import Settings

    scope = {"type": "http", "method": "POST", "path": "/v1/translate",
             "headers": [(b"x-request-timeout", b"5")],
             "extensions": {ARRIVAL: {"at": time.perf_counter() - 2.0}}}  # waited 2 s before the route ran
    left = deadline_for(Request(scope), Settings(warmup=False)) - time.monotonic()
    assert 2.9 < left <= 3.0
    del scope["extensions"]
    assert 4.9 < deadline_for(Request(scope), Settings(warmup=False)) - time.monotonic() <= 5.0


def _door_and_admission(limit: int = 1) -> tuple[Any, Any]:
    from types import SimpleNamespace

    from service.admission import Admission
    from service.early_refusal import EarlyRefusal
    from service.settings import Settings

    admission = Admission("translator", limit=limit)
    model = SimpleNamespace(name="translator", version="1", card=SimpleNamespace(task="translation"),
                            engine=SimpleNamespace(admission=admission))
    registry = SimpleNamespace(generation=0, all=lambda: [model], latest=lambda: [model])
    door = EarlyRefusal(Settings(warmup=False))
    door.open(registry)  # type: ignore[arg-type]
    return door, admission


def _protocol(app: Any, transport: _Transport, **config: Any) -> ArrivalStampingProtocol:
    """The protocol over ``app`` (its outermost layer the app's own, ArrivalReleaseMiddleware,
    which ends a request's arrival) with the door and the pass budget in the app's state."""
    from service.early_refusal import ArrivalReleaseMiddleware

    class App:
        state = app.state

        def __init__(self) -> None:
            self.inner = ArrivalReleaseMiddleware(app)

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await self.inner(scope, receive, send)

    loaded = Config(app=App(), http=ArrivalStampingProtocol, log_level="warning", **config)
    loaded.load()
    protocol = ArrivalStampingProtocol(config=loaded, server_state=ServerState(), app_state={})
    protocol.connection_made(transport)
    return protocol


def _app(door: Any, ran: list[str], seconds: float = 0.0, budget: Any = None) -> Any:
    from types import SimpleNamespace

    async def app(scope: Any, receive: Any, send: Any) -> None:
        ran.append(scope["path"])
        await asyncio.sleep(seconds)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app.state = SimpleNamespace(early_refusal=door, pass_budget=budget)  # type: ignore[attr-defined]
    return app


def _post(body: bytes = b'{"text": "a"}', extra: bytes = b"") -> bytes:
    return (b"POST /v1/translate HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n%s"
            b"Content-Length: %d\r\n\r\n%s" % (extra, len(body), body))


async def read_body(receive: Any) -> bytes:
    """An ASGI app's whole request body."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def _until(condition: Any) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.001)


async def test_a_full_models_request_is_answered_by_the_protocol_and_the_connection_goes_on() -> None:
    door, admission = _door_and_admission()
    ran: list[str] = []
    transport = _Transport()
    protocol = _protocol(_app(door, ran), transport)
    admission.waiting = 1  # full
    body = b'{"text": not json'  # the app would answer 422; refused on arrival, it is never read
    request = _post(body)
    protocol.data_received(request[:-12])
    assert transport.written == b""  # answered once its whole body has been read
    protocol.data_received(request[-12:])
    assert transport.written.startswith(b"HTTP/1.1 503 ") and b'"code":"overloaded"' in transport.written
    assert not transport.closed and ran == []
    # the same connection serves its next request through the app
    transport.written = b""
    admission.waiting = 0
    protocol.data_received(b"GET /v2/health/ready HTTP/1.1\r\nHost: a\r\n\r\n")
    await _until(lambda: transport.written)
    assert ran == ["/v2/health/ready"] and transport.written.startswith(b"HTTP/1.1 204")


async def test_a_refusal_whose_body_is_still_arriving_at_shutdown_is_answered_then_closed() -> None:
    door, admission = _door_and_admission()
    transport = _Transport()
    protocol = _protocol(_app(door, []), transport)
    admission.waiting = 1
    request = _post()
    protocol.data_received(request[:-5])  # refused at its headers, its body not all in yet
    protocol.shutdown()  # SIGTERM: uvicorn asks every connection to finish
    assert not transport.closed and transport.written == b""
    protocol.data_received(request[-5:])
    assert transport.written.startswith(b"HTTP/1.1 503 ") and b"\r\nconnection: close\r\n" in transport.written
    assert transport.closed


async def test_a_request_counts_as_arriving_until_its_app_starts_and_pipelined_ones_do_not() -> None:
    door, admission = _door_and_admission(limit=8)
    ran: list[str] = []
    transport = _Transport()
    protocol = _protocol(_app(door, ran, seconds=0.05), transport)
    protocol.data_received(_post() * 3)  # the second and third wait behind the first
    assert admission.arriving == 1
    await _until(lambda: ran)
    assert admission.arriving == 0
    protocol.connection_lost(None)  # the client leaves: uvicorn drops the pipelined two
    await asyncio.sleep(0.1)
    assert admission.arriving == 0


async def test_the_request_being_answered_hears_that_its_client_left_behind_pipelined_ones() -> None:
    """uvicorn tells only the newest request of a connection that the client left; the one being
    answered must hear it too, or it writes to a closed transport (a 500 logged) and its work runs on."""
    from types import SimpleNamespace

    heard: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()  # the body
        heard.append((await asyncio.wait_for(receive(), 2))["type"])  # then only a disconnect can come

    app.state = SimpleNamespace(early_refusal=None, pass_budget=None)  # type: ignore[attr-defined]
    protocol = _protocol(app, _Transport())
    protocol.data_received(_post() * 3)  # the second and third wait behind the first
    await asyncio.sleep(0.05)
    protocol.connection_lost(None)
    await _until(lambda: heard)
    assert heard == ["http.disconnect"]


def _recording(ran: list[str]) -> Any:
    """An app (no door, no pass budget in its state) that answers 200 "ok" and records each path."""
    from types import SimpleNamespace

    async def app(scope: Any, receive: Any, send: Any) -> None:
        ran.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    app.state = SimpleNamespace(early_refusal=None, pass_budget=None)  # type: ignore[attr-defined]
    return app


@pytest.mark.parametrize("connection", [b"Connection: Upgrade, HTTP2-Settings\r\n",
                                        b"Connection: keep-alive, Upgrade,HTTP2-Settings\r\n"])
async def test_an_upgrade_to_h2c_is_ignored_and_the_request_read_with_its_body(connection: bytes) -> None:
    """Upgrade: h2c (Java's HttpClient sends it on every http:// request by default) made the parser
    take every byte after the head for HTTP/2: a body was lost, and one sent in a later read was
    parsed as a request of its own, so a POST was refused with 400 and Java's default client could
    not call the API. RFC 9110 7.8: the server ignores the upgrade and answers in HTTP/1.1, reading
    the request, its body and what follows it on the connection."""
    bodies: list[tuple[str, bytes, list[tuple[bytes, bytes]]]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        bodies.append((scope["path"], await read_body(receive), scope["headers"]))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    from types import SimpleNamespace
    app.state = SimpleNamespace(early_refusal=None, pass_budget=None)  # type: ignore[attr-defined]
    upgrade = connection + b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n"
    inner = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
    transport = _Transport()
    protocol = _protocol(app, transport)
    protocol.data_received(_post(inner, upgrade)[: -len(inner)])
    protocol.data_received(inner)  # the body, in a later read
    protocol.data_received(b"POST /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n" + upgrade
                           + b"\r\n4\r\nabcd\r\n0\r\n\r\n"
                           + b"GET /v2/health/ready HTTP/1.1\r\nHost: a\r\n" + upgrade + b"\r\n")
    await _until(lambda: len(bodies) == 3)
    assert [(path, body) for path, body, _ in bodies] == [("/v1/translate", inner), ("/chunked", b"abcd"),
                                                          ("/v2/health/ready", b"")]
    for _, _, headers in bodies:  # the app sees a plain HTTP/1.1 request
        names = dict(headers)
        assert b"upgrade" not in names and b"http2-settings" not in names
        assert b"upgrade" not in names.get(b"connection", b"").lower()
    assert dict(bodies[0][2]).get(b"connection") == (b"keep-alive" if b"keep-alive" in connection else None)
    assert transport.written.count(b"HTTP/1.1 200 ") == 3 and not transport.closed  # kept alive


async def test_what_the_parser_takes_for_a_switch_is_answered_without_recursion() -> None:
    """A reviewer's three: CONNECT is a switch for the parser whatever its headers, and its head
    read again was one again (recursion to Python's limit, 340 KB of ERROR log, no answer); each
    pipelined h2c request nested the re-parse one level deeper (1,000 in one read: none answered);
    an upgrade behind a refused request crashed the connection and lost the refusal."""
    ran: list[str] = []
    transport = _Transport()
    _protocol(_recording(ran), transport).data_received(b"CONNECT /x HTTP/1.1\r\nHost: a\r\n\r\n")
    await _until(lambda: transport.closed)
    assert transport.written.startswith(b"HTTP/1.1 501 ") and b'"code":"method_not_implemented"' in transport.written
    upgrade = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\n"
    transport = _Transport()
    _protocol(_recording(ran), transport).data_received(
        b"".join(b"GET /v2/health/live HTTP/1.1\r\nHost: a\r\n" + upgrade + b"\r\n" for _ in range(1500)))
    await _until(lambda: transport.written.count(b"HTTP/1.1 200 ") == 1500)
    transport = _Transport()
    _protocol(_recording(ran), transport).data_received(
        b"GET /v2/health/live HTTP/1.1\r\n\r\nGET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + upgrade + b"\r\n")
    await _until(lambda: transport.closed)
    assert transport.written.startswith(b"HTTP/1.1 400 ") and b'"code":"bad_host"' in transport.written


async def test_a_request_head_is_bounded_in_time_and_size_and_an_idle_connection_closes() -> None:
    """uvicorn bounds neither: a client could hold a connection (and its memory) for ever with a
    head that never ends, or one of megabytes, or by sending nothing at all."""
    from types import SimpleNamespace

    from service.http_protocol import MAX_HEAD_BYTES

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app.state = SimpleNamespace(early_refusal=None, pass_budget=None,  # type: ignore[attr-defined]
                                settings=SimpleNamespace(request_timeout_s=0.05, access_log=True))
    slow = _Transport()
    protocol = _protocol(app, slow)
    protocol.data_received(b"GET /v2/health/ready HTTP/1.1\r\nHost: a\r\nX-Slow: ")  # and then nothing
    await _until(lambda: slow.closed)
    assert slow.written.startswith(b"HTTP/1.1 408 ") and b'"field":"headers"' in slow.written
    big = _Transport()
    protocol = _protocol(app, big)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n")
    for _ in range(MAX_HEAD_BYTES // 4096 + 1):
        protocol.data_received(b"X-Big: " + b"x" * 4089 + b"\r\n")
    assert big.closed and big.written.startswith(b"HTTP/1.1 431 ")
    whole = _Transport()
    protocol = _protocol(app, whole)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Ok: 1\r\n" * 10 + b"\r\n")  # one read: no timer
    assert protocol._head_timer is None
    idle = _Transport()
    _protocol(app, idle, timeout_keep_alive=0.05)  # connects, sends nothing
    await _until(lambda: idle.closed)
    assert idle.closed and idle.written == b""


async def test_an_upgrade_is_neither_counted_nor_refused() -> None:
    door, admission = _door_and_admission()
    transport = _Transport()
    protocol = _protocol(_app(door, []), transport)
    admission.waiting = 1
    protocol.data_received(_post(b"", b"Connection: Upgrade\r\nUpgrade: websocket\r\n"))
    assert admission.arriving == 0 and not transport.written.startswith(b"HTTP/1.1 503")
    assert transport.upgraded_to is not None  # handed to uvicorn's websocket protocol, as before


async def test_a_refusal_and_a_slow_request_in_one_read_keep_the_connection_open() -> None:
    door, admission = _door_and_admission()
    ran: list[str] = []
    transport = _Transport()
    protocol = _protocol(_app(door, ran, seconds=0.3), transport, timeout_keep_alive=0.1)
    admission.waiting = 1
    protocol.data_received(_post() + b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
    assert transport.written.startswith(b"HTTP/1.1 503 ")
    await asyncio.sleep(0.2)  # past the keep-alive timeout, while /slow runs
    assert not transport.closed
    await _until(lambda: b"HTTP/1.1 204" in transport.written)
    assert ran == ["/slow"] and b"HTTP/1.1 204" in transport.written


async def test_a_burst_of_requests_is_parsed_a_share_per_loop_pass_in_order() -> None:
    from service.loop_budget import PassBudget

    door, admission = _door_and_admission()
    admission.waiting = 1  # full: each request is answered by the protocol itself
    app = _app(door, [], budget=PassBudget(per_pass=2))
    transports = [_Transport() for _ in range(5)]
    protocols = [_protocol(app, t) for t in transports]
    read_by = []
    for protocol in protocols:
        protocol.data_received(_post())
        read_by.append(time.perf_counter())
    answered = [bool(t.written) for t in transports]
    assert answered == [True, True, False, False, False]
    assert [t.reading for t in transports] == answered  # the rest hold their bytes, unread
    for n in (4, 5):
        await asyncio.sleep(0)  # the next pass of the loop: the next two in line
        assert [bool(t.written) for t in transports] == [True] * n + [False] * (5 - n)
    assert all(t.written.startswith(b"HTTP/1.1 503 ") and t.reading for t in transports)
    # each counted from when it was read, its wait for a turn included
    assert all(p.arrived < at for p, at in zip(protocols, read_by, strict=True))


async def test_a_keep_alive_connections_next_request_waits_its_turn_too() -> None:
    from service.loop_budget import PassBudget

    door, _ = _door_and_admission(limit=8)
    ran: list[str] = []
    app = _app(door, ran, budget=PassBudget(per_pass=1))
    first = _Transport()
    kept_alive = _protocol(app, first)
    kept_alive.data_received(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
    await _until(lambda: first.written)
    _protocol(app, _Transport()).data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")  # this pass's one
    kept_alive.data_received(b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n")
    assert not first.reading and "/b" not in ran  # held, not parsed
    await _until(lambda: "/b" in ran)
    assert first.reading


async def test_a_held_request_is_answered_at_shutdown() -> None:
    from service.loop_budget import PassBudget

    door, admission = _door_and_admission()
    app = _app(door, [], budget=PassBudget(per_pass=1))
    transport = _Transport()
    protocol = _protocol(app, transport)
    protocol.data_received(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
    await _until(lambda: transport.written)
    transport.written = b""
    _protocol(app, _Transport()).data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")  # this pass's one
    admission.waiting = 1
    protocol.data_received(_post())
    assert transport.written == b""  # held
    protocol.shutdown()
    assert transport.written.startswith(b"HTTP/1.1 503 ") and b"\r\nconnection: close\r\n" in transport.written
    assert transport.closed


async def test_a_health_check_skips_the_line() -> None:
    from service.loop_budget import PassBudget

    door, _ = _door_and_admission()
    ran: list[str] = []
    app = _app(door, ran, budget=PassBudget(per_pass=1))
    _protocol(app, _Transport()).data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")  # this pass's one
    waiting = _Transport()
    _protocol(app, waiting).data_received(b"GET /y HTTP/1.1\r\nHost: a\r\n\r\n")
    probe = _Transport()
    _protocol(app, probe).data_received(b"GET /v2/health/live HTTP/1.1\r\nHost: a\r\n\r\n")
    assert not waiting.reading and probe.reading  # parsed at once, ahead of the one in line
    await _until(lambda: probe.written)
    assert ran.index("/v2/health/live") < ran.index("/y")


async def test_requests_pipelined_behind_a_refusal_go_to_the_app_one_at_a_time() -> None:
    door, admission = _door_and_admission()
    ran: list[str] = []
    transport = _Transport()
    protocol = _protocol(_app(door, ran), transport)
    admission.waiting = 1
    protocol.data_received(_post() * 50)  # one read: only its first request is refused here
    assert transport.written.count(b"HTTP/1.1 503 ") == 1
    await _until(lambda: len(ran) == 49)
    assert ran == ["/v1/translate"] * 49  # the app answered the rest, each in its turn


async def test_a_connection_that_closes_while_it_waits_gives_its_turn_to_the_next() -> None:
    from service.loop_budget import PassBudget

    door, _ = _door_and_admission()
    app = _app(door, [], budget=PassBudget(per_pass=1))
    transports = [_Transport() for _ in range(3)]
    protocols = [_protocol(app, t) for t in transports]
    for protocol in protocols:
        protocol.data_received(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [t.reading for t in transports] == [True, False, False]
    transports[1].closed = True
    protocols[1].connection_lost(None)
    await asyncio.sleep(0)
    assert transports[2].reading


class _Writes(_Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        super().write(data)


def _connected(app: Any, transport: _Transport) -> ArrivalStampingProtocol:
    config = Config(app=app, http=ArrivalStampingProtocol, log_level="warning")
    config.load()
    protocol = ArrivalStampingProtocol(config=config, server_state=ServerState(), app_state={})
    protocol.connection_made(transport)
    return protocol


async def _answer(request: bytes, app: Any) -> _Writes:
    transport = _Writes()
    protocol = _connected(app, transport)
    protocol.data_received(request)
    for _ in range(200):
        await asyncio.sleep(0.001)
        if transport.writes and transport.writes[-1].endswith((b"}", b"0\r\n\r\n", b"\r\n\r\n")):
            break
    return transport


async def test_a_responses_head_goes_out_with_its_first_body_write() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        if scope["method"] != "HEAD":
            await send({"type": "http.response.body", "body": b"{}"})
        else:
            await send({"type": "http.response.body", "body": b""})

    plain = await _answer(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", app)
    assert len(plain.writes) == 1
    assert plain.writes[0].startswith(b"HTTP/1.1 200 OK") and plain.writes[0].endswith(b"{}")
    head = await _answer(b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n", app)  # no body write: the head goes alone
    assert len(head.writes) == 1 and head.writes[0].startswith(b"HTTP/1.1 200 OK")
    # "100 Continue" is not a response's head: it goes out at once, before the app answers
    expecting = await _answer(b"POST /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
                              app)
    assert expecting.writes[0] == b"HTTP/1.1 100 Continue\r\n\r\n"


async def test_a_streamed_responses_head_goes_with_its_first_event() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": False})

    streamed = await _answer(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", app)
    assert len(streamed.writes) == 2 and b"transfer-encoding: chunked" in streamed.writes[0]
    assert streamed.writes[0].endswith(b"data: 1\n\n\r\n") and streamed.writes[1].endswith(b"0\r\n\r\n")


async def test_an_http10_client_gets_a_stream_delimited_by_the_close_not_in_chunks() -> None:
    """RFC 9112 6.1: no Transfer-Encoding in an answer to HTTP/1.0, whose clients (ApacheBench,
    nginx's proxy_pass by default) cannot read chunks: the events come as they are, then the close."""
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": True})
        await send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": False})

    streamed = await _answer(b"GET /x HTTP/1.0\r\n\r\n", app)
    answer = b"".join(streamed.writes)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower() and b"connection: close" in head
    assert body == b"data: 1\n\ndata: 2\n\n" and streamed.closed
    chunked = await _answer(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", app)  # HTTP/1.1 keeps its chunks
    assert b"transfer-encoding: chunked" in chunked.writes[0] and not chunked.closed


@pytest.mark.parametrize("head", [
    b"GET /x HTTP/1.1\r\n\r\n",  # no Host
    b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET /x HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n",
])
async def test_a_request_without_exactly_one_host_is_refused_before_the_app(head: bytes) -> None:
    """RFC 9112 3.2: a server MUST answer 400 to an HTTP/1.1 request without Host, and to any with
    more than one (a proxy and the app could each route by a different one). What was pipelined
    behind it is not run either."""
    ran: list[str] = []
    app = _recording(ran)
    transport = _Transport()
    protocol = _protocol(app, transport)
    protocol.data_received(head + b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    await asyncio.sleep(0.02)
    assert ran == [] and transport.closed and transport.written.startswith(b"HTTP/1.1 400 ")
    assert transport.written.endswith(b'"code":"bad_host","field":"Host","limit":1}')
    fine = _Transport()
    _protocol(app, fine).data_received(b"GET /x HTTP/1.0\r\n\r\n")  # HTTP/1.0 may leave Host out
    await asyncio.sleep(0.02)
    assert ran == ["/x"] and fine.written.startswith(b"HTTP/1.1 200 ")


def _held(release: asyncio.Event, body: bytes) -> Any:
    """An app that answers 200 ``body`` to each request once ``release`` is set."""
    from types import SimpleNamespace

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    app.state = SimpleNamespace(early_refusal=None, pass_budget=None)  # type: ignore[attr-defined]
    return app


async def test_a_refusal_pipelined_behind_a_request_in_flight_waits_its_turn() -> None:
    """The request being answered keeps its answer: the refusal of one pipelined behind it (no
    Host) goes out after it, then the connection closes."""
    release = asyncio.Event()
    transport = _Transport()
    protocol = _protocol(_held(release, b"first"), transport)
    protocol.data_received(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\nGET /second HTTP/1.1\r\n\r\n")
    await asyncio.sleep(0.02)
    assert transport.written == b"" and not transport.closed  # nothing answers in the first one's place
    release.set()
    for _ in range(100):
        await asyncio.sleep(0.005)
        if transport.closed:
            break
    first, _, second = transport.written.partition(b"first")
    assert first.startswith(b"HTTP/1.1 200 ") and second.startswith(b"HTTP/1.1 400 ") and transport.closed
    assert b'"code":"bad_host"' in second


@pytest.mark.parametrize(("wire", "reason", "field", "line"), [
    (b"GARBAGE\r\n\r\n", b"Invalid method", b"headers", (None, None)),
    (b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n", b"Content-Length", b"headers", ("GET", "/x")),
    (b"GET /x?q=1 HTTP/1.1\r\nHost a\r\n\r\n", b"header token", b"headers", ("GET", "/x")),
    (b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
     b"Transfer-Encoding", b"headers", ("GET", "/x")),
])
async def test_bytes_that_are_not_http_get_a_json_400_with_the_parsers_reason_and_are_recorded(
        wire: bytes, reason: bytes, field: bytes, line: tuple[str | None, str | None],
        access_lines: Callable[[], list[dict[str, Any]]]) -> None:
    """uvicorn answered text/plain "Invalid HTTP request received." and recorded nothing: no access
    log line, no metric, so an operator saw 400s at the client and none at the server."""
    ran: list[str] = []
    transport = _Transport()
    _protocol(_recording(ran), transport).data_received(wire + b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    await asyncio.sleep(0.01)
    head, _, body = transport.written.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"content-type: application/json" in head and transport.closed
    assert b"x-request-id: " in head and b"connection: close" in head
    assert body.startswith(b'{"error":"malformed HTTP/1.1 request: ') and reason in body, body
    assert body.endswith(b'"code":"malformed_request","field":"' + field + b'"}') and ran == []
    (entry,) = access_lines()
    assert (entry["method"], entry["path"], entry["route"], entry["status"]) == (*line, "protocol", 400)
    assert head.count(entry["request_id"].encode()) == 1


async def test_a_body_that_breaks_the_chunked_framing_is_answered_by_its_request_layers(
        access_lines: Callable[[], list[dict[str, Any]]]) -> None:
    """The request's layers are reading its body when the parser fails: they answer it (uvicorn
    wrote its text/plain 400 under them, and their wait ended as a client that left: a 499 in the
    log for a request the client was told was bad), and the connection closes after."""
    from types import SimpleNamespace

    reached: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["path"])

    inner = RequestContextMiddleware(app, max_body_bytes=1024)
    inner.state = SimpleNamespace(early_refusal=None, pass_budget=None)  # type: ignore[attr-defined]
    transport = _Transport()
    protocol = _protocol(inner, transport)
    protocol.data_received(b"POST /v1/sentiment HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"5\r\n{\"tex\r\n")
    await asyncio.sleep(0.01)
    assert transport.written == b""  # the body so far is fine: it waits for the rest
    protocol.data_received(b"ZZ\r\nt\": 1}\r\n0\r\n\r\n")
    await _until(lambda: transport.closed)
    head, _, body = transport.written.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"connection: close" in head and transport.closed
    assert json.loads(body) == {"error": "malformed HTTP/1.1 request: Invalid character in chunk size",
                                "code": "malformed_request", "field": "body"}
    assert reached == [] and [(e["path"], e["status"]) for e in access_lines()] == [("/v1/sentiment", 400)]


async def test_bytes_that_break_http_behind_requests_in_flight_are_answered_after_them(
        access_lines: Callable[[], list[dict[str, Any]]]) -> None:
    """uvicorn wrote its 400 and closed the connection at once, so the requests before the bad
    bytes, still being answered, lost their answers."""
    release = asyncio.Event()
    transport = _Transport()
    protocol = _protocol(_held(release, b"ok"), transport)
    protocol.data_received(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\nGET /second HTTP/1.1\r\nHost: a\r\n\r\n"
                           b"GET /third HTTP/1.1\r\nHost a\r\n\r\n")
    await asyncio.sleep(0.02)
    assert transport.written == b"" and not transport.closed
    protocol.data_received(b"GET /never HTTP/1.1\r\nHost: a\r\n\r\n")  # nothing after the error is read
    release.set()
    await _until(lambda: transport.closed)
    assert re.findall(rb"^HTTP/1\.1 (\d+) |\r\n\r\nokHTTP/1\.1 (\d+) ", transport.written) == [
        (b"200", b""), (b"", b"200"), (b"", b"400")]
    assert transport.written.endswith(b'"field":"headers"}') and transport.closed
    assert [(e["path"], e["status"]) for e in access_lines()] == [("/third", 400)]


async def test_a_refusal_before_the_app_is_recorded_and_carries_a_request_id(
        access_lines: Callable[[], list[dict[str, Any]]]) -> None:
    transport = _Transport()
    _protocol(_recording([]), transport).data_received(b"GET /x HTTP/1.1\r\nX-Request-ID: abc-1\r\n\r\n")
    await _until(lambda: transport.closed)
    assert transport.written.startswith(b"HTTP/1.1 400 ") and b"x-request-id: abc-1\r\n" in transport.written
    (entry,) = access_lines()
    assert (entry["request_id"], entry["path"], entry["route"], entry["status"]) == ("abc-1", "/x", "protocol", 400)


def test_a_servers_answers_to_broken_http_are_json_and_counted(committed_server: Server) -> None:
    """Against a real server: the answers and the series an operator reads."""
    before = metric_value(committed_server.url, "seqserve_requests_total", route="protocol", status="400")
    broken_body = b"POST /v1/sentiment HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n"
    for wire in (b"GARBAGE\r\n\r\n", broken_body):
        with socket.create_connection(("127.0.0.1", committed_server.port), timeout=10) as sock:
            sock.sendall(wire)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 ") and json.loads(body)["code"] == "malformed_request", answer
    # the first is the protocol's; the second, a body, its route's
    assert metric_value(committed_server.url, "seqserve_requests_total", route="protocol", status="400") == before + 1
    assert metric_value(committed_server.url, "seqserve_requests_total", route="/v1/sentiment", status="400") >= 1


@pytest.mark.parametrize(("head", "status", "code"), [
    (b"GET /x HTTP/1.1\r\nHost: a b/c@d\r\n\r\n", b"400", b"bad_host"),  # RFC 9112 3.2: an invalid Host value
    # RFC 9112 6.1: a coding the server does not implement is 501; HTTP/1.0 framing with one is faulty
    (b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", b"501",
     b"transfer_coding_not_implemented"),
    (b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
     b"501", b"transfer_coding_not_implemented"),
    (b"POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", b"400", b"malformed_request"),
    (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", b"414", b"malformed_request"),  # RFC 9112 3
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * 70_000 + b"\r\n\r\n", b"431", b"request_head_refused"),
    # RFC 9110 15.6.6: the parser reads these lines, and they were answered as HTTP/1.1 (nginx: 505)
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", b"505", b"http_version_not_supported"),
    (b"GET / HTTP/0.9\r\nHost: a\r\n\r\n", b"505", b"http_version_not_supported"),
])
async def test_a_head_that_breaks_a_rule_left_to_the_server_is_refused_before_the_app(
        head: bytes, status: bytes, code: bytes) -> None:
    ran: list[str] = []
    transport = _Transport()
    _protocol(_recording(ran), transport).data_received(head)
    await _until(lambda: transport.closed)
    assert transport.written.startswith(b"HTTP/1.1 " + status + b" ") and transport.closed and ran == []
    assert b'"code":"' + code + b'"' in transport.written


@pytest.mark.parametrize(("target", "path", "query"), [
    (b"http://a", "/", b""), (b"http://a:80?x=1", "/", b"x=1"), (b"http://a/p/q?y", "/p/q", b"y"),
])
async def test_an_absolute_form_target_is_served_by_its_path(target: bytes, path: str, query: bytes) -> None:
    """RFC 9112 3.2.2 (as proxies send): "http://a" with no path is "/" (3.3); uvicorn raised on it,
    and the client got a 500."""
    seen: list[tuple[str, bytes]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope["path"], scope["query_string"]))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app.state = _recording([]).state  # type: ignore[attr-defined]
    transport = _Transport()
    _protocol(app, transport).data_received(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    await _until(lambda: bool(seen))
    assert seen == [(path, query)]


async def test_an_http10_client_is_never_sent_100_continue() -> None:
    """RFC 9110 10.1.1 and 15.2: the expectation is ignored from HTTP/1.0, which no 1xx may reach."""
    transport = _Transport()
    protocol = _protocol(_recording([]), transport)
    protocol.data_received(b"POST /x HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert not protocol.expect_100_continue
    await asyncio.sleep(0.01)
    assert b"100 Continue" not in transport.written


async def test_an_answer_before_the_request_is_all_read_lingers_instead_of_resetting(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Closed with unread bytes, a connection is reset by the kernel, and a client still sending
    (Python's http.client uploading a body) got ConnectionResetError instead of the 431 or 400
    the access log recorded. The sending side closes; what still comes is dropped, then the
    connection closes (RFC 9112 9.6)."""
    from service import http_protocol

    monkeypatch.setattr(http_protocol, "LINGER_S", 0.05)
    ran: list[str] = []
    transport = _Transport()
    transport.half_closes = True
    protocol = _protocol(_recording(ran), transport)
    protocol.data_received(b"POST /x HTTP/1.1\r\nHost: a\r\nBad Header: x\r\nContent-Length: 3000000\r\n\r\n")
    assert transport.written.startswith(b"HTTP/1.1 400 ") and transport.eof_written and not transport.closed
    protocol.data_received(b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n" + b"x" * 65536)  # dropped, unparsed
    await _until(lambda: transport.closed)
    assert transport.closed and ran == [] and transport.written.count(b"HTTP/1.1 4") == 1
    done = _Transport()
    done.half_closes = True
    protocol = _protocol(_recording(ran), done)
    protocol.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")  # all read
    await _until(lambda: done.closed)
    assert done.closed and not done.eof_written and ran == ["/x"]  # nothing to wait for: closed at once


async def test_a_body_still_trickling_after_an_early_answer_is_not_waited_for_past_its_deadline() -> None:
    """A request answered before its body was read (413 for a declared 1 GB) kept its connection
    open as long as the client sent a byte now and then: its deadline stopped at the answer."""
    from types import SimpleNamespace

    inner = RequestContextMiddleware(_recording([]), max_body_bytes=1024)
    inner.state = SimpleNamespace(early_refusal=None, pass_budget=None,  # type: ignore[attr-defined]
                                  settings=SimpleNamespace(request_timeout_s=0.1, access_log=False))
    transport = _Transport()
    protocol = _protocol(inner, transport)
    protocol.data_received(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000000\r\n\r\nab")
    await _until(lambda: b"413" in transport.written)
    assert transport.written.startswith(b"HTTP/1.1 413 ") and not transport.closed
    for _ in range(3):
        await asyncio.sleep(0.05)
        protocol.data_received(b"c")
    await _until(lambda: transport.closed)
    assert transport.closed


@pytest.mark.parametrize("after", [b"GARBAGE\r\n\r\n", b"GET /next HTTP/1.1\r\n\r\n"])  # bad bytes, no Host
async def test_nothing_is_written_after_a_lingering_close(after: bytes, access_lines: Callable[[], list[Any]]) -> None:
    """An HTTP/1.0 answer closes the connection; with a refused request behind it the close
    lingers, and uvicorn, seeing a transport that was not closing, ran the request behind it and
    wrote after the half-close: RuntimeError, a 500 in the access log for the answered request."""
    ran: list[str] = []
    transport = _Transport()
    transport.half_closes = True
    _protocol(_recording(ran), transport).data_received(
        b"GET /first HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" + after)
    await _until(lambda: transport.eof_written)
    await asyncio.sleep(0.02)
    assert ran == ["/first"] and transport.written.startswith(b"HTTP/1.1 200 ") and transport.written.endswith(b"ok")
    assert transport.eof_written and [e["status"] for e in access_lines()] == []  # the fake app logs nothing


async def test_a_head_over_the_limit_is_refused_when_its_last_read_completes_it() -> None:
    """Measured only while incomplete, a head that came in reads of 50 KB each was accepted at
    100 KB: its last read, which completed it, was never counted."""
    ran: list[str] = []
    transport = _Transport()
    protocol = _protocol(_recording(ran), transport)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: " + b"a" * 50_000 + b"\r\n")
    assert transport.written == b""
    protocol.data_received(b"X-B: " + b"b" * 50_000 + b"\r\n\r\n")
    await _until(lambda: transport.closed)
    assert transport.written.startswith(b"HTTP/1.1 431 ") and ran == []


async def test_a_connection_answered_before_its_body_was_read_closes_when_idle() -> None:
    """After a 413, each read of the body disarmed the keep-alive timer, and nothing armed it
    again once the body was over: the connection stayed open for good."""
    from types import SimpleNamespace

    inner = RequestContextMiddleware(_recording([]), max_body_bytes=1024)
    inner.state = SimpleNamespace(early_refusal=None, pass_budget=None)  # type: ignore[attr-defined]
    transport = _Transport()
    protocol = _protocol(inner, transport, timeout_keep_alive=0.05)
    protocol.data_received(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2000\r\n\r\n" + b"a" * 1000)
    await _until(lambda: b"413" in transport.written)
    protocol.data_received(b"a" * 1000)  # the rest: the message is complete, the connection idle
    await _until(lambda: transport.closed)
    assert transport.closed and transport.written.count(b"HTTP/1.1 ") == 1


async def test_an_answered_connection_closes_after_the_keep_alive_timeout_of_its_last_request() -> None:
    """The keep-alive timeout counts from the last answer (service/timers.py keeps one timer for
    it, not one a request): requests that keep coming keep the connection open past the timeout
    counted from the first; once none comes for the timeout, it closes."""
    ran: list[str] = []
    transport = _Transport()
    protocol = _protocol(_recording(ran), transport, timeout_keep_alive=0.1)
    for i in range(6):  # 0.3 s of requests, each within the timeout of the one before
        protocol.data_received(f"GET /{i} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        await _until(lambda i=i: len(ran) == i + 1 and transport.written.count(b"HTTP/1.1 200") == i + 1)
        await asyncio.sleep(0.05)
        assert not transport.closed
    answered = time.perf_counter()
    await _until(lambda: transport.closed)
    assert transport.closed and 0.03 <= time.perf_counter() - answered < 1.0


async def test_a_connection_that_never_sends_a_request_closes_by_the_request_deadline() -> None:
    """The keep-alive timeout is long (SEQSERVE_KEEP_ALIVE_S, 75 s, longer than proxies keep idle
    upstream connections); a connection that sends nothing is held no longer than a head may take."""
    from types import SimpleNamespace

    app = _recording([])
    app.state.settings = SimpleNamespace(request_timeout_s=0.05, access_log=False)
    idle = _Transport()
    _protocol(app, idle, timeout_keep_alive=75)
    await _until(lambda: idle.closed)
    assert idle.closed and idle.written == b""


async def test_line_breaks_alone_do_not_hold_an_idle_connection_open() -> None:
    """The parser skips CRLFs before a request (RFC 9112 2.2), so no request began and the idle
    timer was never armed again: one CRLF now and then held a connection open for ever (a fuzzer's
    finding). The timer runs through them; a request that follows still stops it."""
    idle = _Transport()
    protocol = _protocol(_recording([]), idle, timeout_keep_alive=0.1)
    for _ in range(3):
        protocol.data_received(b"\r\n")
        await asyncio.sleep(0.03)
    await _until(lambda: idle.closed)
    assert idle.closed and idle.written == b""
    ran: list[str] = []
    served = _Transport()
    protocol = _protocol(_recording(ran), served, timeout_keep_alive=0.1)
    protocol.data_received(b"\r\n")
    protocol.data_received(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
    await _until(lambda: b"HTTP/1.1 200" in served.written)
    assert ran == ["/after"]


async def test_a_head_too_big_behind_a_request_in_flight_is_refused_after_its_answer() -> None:
    """The connection closed at once, and the answer to the request before it was lost (the access
    log said 200): it is answered first, then the 431."""
    from service.http_protocol import MAX_HEAD_BYTES

    ran: list[str] = []
    transport = _Transport()
    protocol = _protocol(_app(None, ran, seconds=0.1), transport)
    protocol.data_received(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\nGET /second HTTP/1.1\r\nHost: a\r\n")
    for _ in range(MAX_HEAD_BYTES // 4096 + 1):
        protocol.data_received(b"X-Big: " + b"x" * 4089 + b"\r\n")
    await _until(lambda: transport.closed)
    await _until(lambda: transport.closed and b"HTTP/1.1 431" in transport.written)
    first, _, rest = transport.written.partition(b"HTTP/1.1 431 ")
    assert first.startswith(b"HTTP/1.1 204 ") and rest and transport.closed and ran == ["/first"]


async def test_a_body_that_breaks_after_its_request_was_answered_gets_no_second_answer() -> None:
    """A request refused on its head (401, 415) is answered before its body is read; a chunked body
    that then broke the framing got a 400 too, which the client read as its next request's answer."""
    async def refuse(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 415, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"no"})

    refuse.state = _recording([]).state  # type: ignore[attr-defined]
    transport = _Transport()
    protocol = _protocol(refuse, transport)
    protocol.data_received(b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    await _until(lambda: b"HTTP/1.1 415" in transport.written)
    protocol.data_received(b"zz\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    await asyncio.sleep(0.05)
    assert transport.written.count(b"HTTP/1.1 ") == 1 and b"HTTP/1.1 400" not in transport.written


async def test_a_refusal_the_protocol_writes_to_a_head_request_has_no_body() -> None:
    """RFC 9110 9.3.2: no content in an answer to HEAD; the protocol's own answers (400, 408, 431)
    carried their JSON, where the app's answers to HEAD did not."""
    transport = _Transport()
    protocol = _protocol(_recording([]), transport)
    protocol.data_received(b"HEAD /v2/health/ready HTTP/1.1\r\nHost: x\r\nContent-Length: 1.0\r\n\r\n")
    await _until(lambda: transport.closed)
    head, _, body = transport.written.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"content-length: " in head and body == b""


async def test_an_absolute_form_target_is_refused_on_arrival_as_its_path_is() -> None:
    door, admission = _door_and_admission()
    transport = _Transport()
    protocol = _protocol(_app(door, []), transport)
    admission.waiting = 1  # full
    protocol.data_received(_post().replace(b"POST /v1/translate", b"POST http://a/v1/translate"))
    assert transport.written.startswith(b"HTTP/1.1 503 ")


async def test_a_body_that_stops_arriving_after_a_refusal_on_arrival_gets_408() -> None:
    """Its 503 is due once its body is in; when the body stops, the connection was closed without a
    word or a log line at the deadline."""
    door, admission = _door_and_admission()
    transport = _Transport()
    protocol = _protocol(_app(door, []), transport)
    protocol._head_timeout_s = 0.05
    admission.waiting = 1  # full
    protocol.data_received(_post(b'{"text": "a"}')[:-4])  # the body's last bytes never come
    await _until(lambda: transport.closed)
    assert transport.written.startswith(b"HTTP/1.1 408 ") and b'"code":"request_timeout"' in transport.written


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_the_scope_names_both_ends_of_a_real_connection(host: str) -> None:
    """The client's and the server's address come from what the loop noted when it accepted the
    connection (no socket object is made for them): as uvicorn gives them, (host, port), over
    IPv6 too."""
    if host == "::1" and not socket.has_ipv6:
        pytest.skip("no IPv6 here")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = json.dumps({"client": scope["client"], "server": scope["server"]}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

    config = Config(app=app, http=ArrivalStampingProtocol, log_level="warning")
    config.load()
    state = ServerState()
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(
            lambda: ArrivalStampingProtocol(config=config, server_state=state, app_state={}, _loop=loop), host, 0)
    except OSError:
        pytest.skip(f"cannot listen on {host} here")
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
        ends = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert ends == {"client": list(writer.get_extra_info("sockname")[:2]), "server": [host, port]}
        writer.close()
    finally:
        server.close()


async def test_no_socket_object_is_made_for_a_connections_addresses() -> None:
    """uvloop makes a socket object, with four system calls, whenever the transport's "socket"
    is asked for: the protocol reads the addresses the loop noted instead, and keeps the real
    transport."""

    class Counting(_Transport):
        def __init__(self) -> None:
            super().__init__()
            self.asked: list[str] = []

        def get_extra_info(self, name: str, default: Any = None) -> Any:
            self.asked.append(name)
            if name == "socket":
                return object()  # where uvloop would make a socket object
            return {"peername": ("::1", 5000, 0, 0), "sockname": ("::1", 8000, 0, 0)}.get(name, default)

    config = Config(app=lambda scope, receive, send: None, http=ArrivalStampingProtocol, log_level="warning")
    config.load()
    protocol = ArrivalStampingProtocol(config=config, server_state=ServerState(), app_state={})
    transport = Counting()
    protocol.connection_made(transport)
    assert "socket" not in transport.asked
    assert (protocol.client, protocol.server) == (("::1", 5000), ("::1", 8000))
    assert protocol.transport is transport
    protocol.flow.pause_reading()  # the flow control's pause and resume reach the real transport
    assert not transport.reading
    protocol.flow.resume_reading()
    assert transport.reading
    protocol.connection_lost(None)


async def test_an_answered_request_is_freed_without_the_garbage_collector() -> None:
    """The head-holding transport lets go of its request cycle once the head is out: a reference
    back from it made every answered request a reference cycle (the cycle, its event, scope and
    callbacks), which only the garbage collector freed, at ~3 % of the event loop's CPU."""
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"{}"})

    protocol = _connected(app, _Writes())
    gc.disable()
    try:
        cycles = []
        for method in (b"POST", b"HEAD", b"GET"):  # the last one replaces the cycle of the one before
            protocol.data_received(method + b" /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
            await _until(lambda: protocol.cycle is not None and protocol.cycle.response_complete)
            cycles.append(weakref.ref(protocol.cycle))
            await asyncio.sleep(0)  # the request's task ends after its last write
        assert [c() is None for c in cycles] == [True, True, False]
    finally:
        gc.enable()
